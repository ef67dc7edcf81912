"""The upstream side: consume jobs, call providers through adapters, publish frames."""
