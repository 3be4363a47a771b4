"""fedblend.dashboard: a live web view of one run, read only from its run store.

    fedblend dashboard RUN_DIR                       # simulations: http://127.0.0.1:8050
    app.mount("/dashboard", create_app(store, auth=DashboardAuth(viewer_tokens=[...], admin_tokens=[...])))

Pages: overview (sites, server state, round pipeline), training, blend, data, search; a JSON
API under /api (in the OpenAPI schema) and server-sent events for live updates. Importing this
package loads the web stack (FastAPI, Jinja2); ``import fedblend`` does not.
"""

from fedblend.dashboard.app import create_app
from fedblend.dashboard.auth import DashboardAuth

__all__ = ["create_app", "DashboardAuth"]
