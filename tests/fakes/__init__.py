"""Fake upstreams that speak the providers' real wire formats and record what they got."""
