import json
import pytest
from tests.agents.conftest import AgentStack

pytestmark = pytest.mark.integration

def test_smoke(stack: AgentStack) -> None:
    cus = stack.new_customer()
    billing, audit = stack.billing_key(), stack.audit_key()
    tools = stack.tools(billing=billing, audit=audit)
    out1 = json.loads(tools.charge_stripe(cus, 2900, "June 2026"))
    out2 = json.loads(tools.charge_stripe(cus, 2900, "2026-06"))
    print(out1, out2)
    print(json.loads(tools.get_charge_status(out1["charge_id"])))
    print(json.loads(tools.list_customer_charges(cus)))
    sup = stack.tools(audit=audit)
    print(json.loads(sup.charge_stripe(cus, 2900, "2026-07")))
    print(len(stack.payment_intents(cus)))
