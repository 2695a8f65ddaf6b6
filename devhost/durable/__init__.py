"""devhost's Durable Functions engine: orchestrations, activities, timers and the management API.

`engine.DurableEngine` is what devhost's host starts; see docs/devhost.md for the design.
"""
