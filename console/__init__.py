"""The operator console: a static page served by the app that drives the admin routes.

`console.routes` serves the page and its assets (anonymous: they hold no data) and, if
no other blueprint does, lists billing runs. Everything the page shows comes from the
function-key-protected admin routes, called from the browser with the operator's key.
"""
