"""spendgate's function app: composes the blueprints, nothing else."""

import azure.durable_functions as df
import azure.functions as func

from activities.billing import bp as billing_activities_bp
from agents.queue_tools import bp as agent_tools_bp
from alerts.routes import bp as alerts_bp
from alerts.timer import bp as alert_sweeper_bp
from console.routes import bp as console_bp
from orchestrators.billing import bp as billing_orchestrators_bp
from orchestrators.routes import bp as billing_routes_bp
from proxy.health import bp as health_bp
from proxy.routes import bp as proxy_bp

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (health_bp, console_bp, proxy_bp, billing_orchestrators_bp, billing_activities_bp, billing_routes_bp,
                  agent_tools_bp, alerts_bp, alert_sweeper_bp):
    app.register_functions(blueprint)
