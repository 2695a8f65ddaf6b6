"""devhost: a local Azure Functions host for spendgate's function_app.py.

Azure Functions Core Tools cannot be installed on every machine (see docs/devhost.md);
devhost loads the same `function_app.py` the Python worker would, and serves its HTTP
triggers, queue triggers, durable orchestrations, activities and the durable client API.
It is a development host: production runs on Azure Functions. App code never imports
devhost, and devhost never imports app code by name.
"""
