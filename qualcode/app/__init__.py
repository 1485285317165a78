"""``qualcode app``: a local web app over an analyst's working folder (see
:mod:`qualcode.app.workspace` for the folder and :mod:`qualcode.app.server` for the server)."""

from qualcode.app.server import create_app, serve
from qualcode.app.workspace import Workspace

__all__ = ["Workspace", "create_app", "serve"]
