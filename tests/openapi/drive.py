"""Drives a running meterhouse through the Python client that openapi-python-client generated
from its own /openapi.json: a catalog write (plan, customer, subscription), ingest, and the
usage read, each answer parsed into the generated models.

The service's address and keys come from METERHOUSE_URL, ADMIN_KEY, INGEST_KEY and READ_KEY, the
generated package from PYTHONPATH. Prints one JSON line of what it read; exits non-zero on any
unexpected answer."""

import datetime
import json
import os
import sys

from meterhouse_client import AuthenticatedClient
from meterhouse_client.api.customers import create_customer
from meterhouse_client.api.events import ingest
from meterhouse_client.api.plans import create_plan
from meterhouse_client.api.subscriptions import create_subscription, read_subscription
from meterhouse_client.api.usage import subscription_usage
from meterhouse_client.models import (
    Ack,
    Customer,
    Error,
    Event,
    Plan,
    SubscriptionInput,
    SubscriptionView,
    UsageReport,
)

base, admin_key, ingest_key, read_key = (
    os.environ[name] for name in ("METERHOUSE_URL", "ADMIN_KEY", "INGEST_KEY", "READ_KEY")
)


def client(key):
    return AuthenticatedClient(base_url=base, token=key, raise_on_unexpected_status=True)


def expect(answer, kind):
    if not isinstance(answer, kind):
        sys.exit(f"expected {kind.__name__}, got {answer!r}")
    return answer


admin = client(admin_key)
plan = Plan.from_dict(
    {
        "code": "gen",
        "name": "Generated",
        "currency": "USD",
        "interval": "month",
        "prices": [
            {"code": "base", "type": "flat", "amount": "10.00", "timing": "advance"},
            {"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit", "unit_amount": "0.25"},
        ],
    }
)
expect(create_plan.sync(client=admin, body=plan), Plan)
expect(create_customer.sync(client=admin, body=Customer(external_id="gen_c", name="Generated")), Customer)
start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
subscription = SubscriptionInput(external_id="gen_s", customer="gen_c", plan="gen", start_date=start)
expect(create_subscription.sync(client=admin, body=subscription), SubscriptionView)

events = [
    Event(id=f"gen-{i}", customer="gen_c", type_="api_call", timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat())
    for i in range(3)
]
ack = expect(ingest.sync(client=client(ingest_key), body=events), Ack)
again = expect(ingest.sync(client=client(ingest_key), body=events[:1]), Ack)

reader = client(read_key)
report = expect(subscription_usage.sync("gen_s", client=reader), UsageReport)
view = expect(read_subscription.sync("gen_s", client=reader), SubscriptionView)
forbidden = subscription_usage.sync_detailed("gen_s", client=client(ingest_key))
print(
    json.dumps(
        {
            "accepted": ack.accepted,
            "duplicates": again.duplicates,
            "quantity": report.charges[0].quantity,
            "total": report.total,
            "status": view.status,
            "estimate": view.estimated_next_invoice_amount,
            "forbidden": [forbidden.status_code, expect(forbidden.parsed, Error).code],
        }
    )
)
