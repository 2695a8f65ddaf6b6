"""spendgate's function app: composes the blueprints, nothing else."""

import azure.durable_functions as df
import azure.functions as func

from proxy.health import bp as health_bp

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (health_bp,):
    app.register_functions(blueprint)
