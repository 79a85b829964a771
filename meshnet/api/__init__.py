"""The local REST/JSON API on a unix socket (mode 0600): server (agent side) and client (CLI).

Routes (all JSON; errors are ``{"error": "one line"}`` with 400, 404 or 409)::

    GET    /v1/status
    GET    /v1/members
    GET    /v1/networks            POST /v1/networks        DELETE /v1/networks/{name}
"""
