"""The console: the web pages a platform team uses, served by the ingress at /console.

Server-rendered (Jinja2, which Quart ships), from files in this package: every page works
without JavaScript, and `static/console.js` only enhances it (copy buttons, tabs, the
model picker submitting itself). Every state-changing action is a form post carrying the
session's CSRF token. One module per page; `base` holds what they share, `session` the
sign-ins, `auth` the sign-in and error pages.
"""

from ingress.console import auth, batches, keys, limits, models, requestlog, usage
from ingress.console.auth import error_page, sign_in_redirect
from ingress.console.base import SignInNeeded, console

__all__ = ["SignInNeeded", "auth", "batches", "console", "error_page", "keys", "limits", "models",
           "requestlog", "sign_in_redirect", "usage"]
