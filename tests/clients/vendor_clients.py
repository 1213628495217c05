"""The vendors' official Python clients against a running meterhouse.

Run by tests/clients.rs with METERHOUSE_URL and the test keys in the environment. Sets up a
plan, a customer and a subscription through meterhouse's own API, sends events with Lago's and
Flexprice's clients, reads usage back with Lago's, Lark's and Flexprice's clients, and checks
every figure against values computed here from the plan's terms. Exits non-zero on the first
mismatch.
"""

import datetime as dt
import os
from decimal import Decimal

import httpx
from flexprice import Flexprice
from lago_python_client.client import Client as LagoClient
from lago_python_client.models import BatchEvent, Event
from lark import Lark

BASE = os.environ["METERHOUSE_URL"]
ADMIN, INGEST, READ = (os.environ[k] for k in ("ADMIN_KEY", "INGEST_KEY", "READ_KEY"))
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def admin(path, body):
    r = httpx.post(BASE + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code < 300, f"{path}: {r.status_code} {r.text}"


def check(what, got, expected):
    assert got == expected, f"{what}: got {got!r}, expected {expected!r}"
    print(f"ok  {what} = {got!r}")


# The plan: 20.00 a month; calls at 0.0125 past 10 included; tokens graduated, 0.001 up to
# 1,000, then 0.0005 with a flat 2.00 on entering the second tier.
PLAN = {
    "code": "team", "name": "Team", "currency": "USD", "interval": "month",
    "prices": [
        {"code": "base", "type": "flat", "amount": "20.00"},
        {"code": "calls", "type": "usage", "meter": "calls", "model": "per_unit",
         "unit_amount": "0.0125", "included_units": "10"},
        {"code": "tokens", "type": "usage", "meter": "tokens", "model": "graduated",
         "tiers": [{"up_to": "1000", "unit_amount": "0.001"},
                   {"up_to": None, "unit_amount": "0.0005", "flat_amount": "2.00"}]},
    ],
}
admin("/v1/plans", PLAN)
admin("/v1/customers", {"external_id": "py_cust", "name": "Py"})
admin("/v1/subscriptions", {"external_id": "py_sub", "customer": "py_cust", "plan": "team",
                            "start_date": (NOW - dt.timedelta(days=2)).isoformat()})

# Events: 37 calls through Lago (one alone, 36 in a batch, the lone one repeated in the batch:
# counted once), and token events through Flexprice.
ts = int((NOW - dt.timedelta(minutes=5)).timestamp())
lago = LagoClient(api_key=INGEST, api_url=BASE + "/lago/")
echo = lago.events.create(Event(transaction_id="py-call-0", external_subscription_id="py_sub",
                                code="api_call", timestamp=ts, properties={}))
check("lago events.create echoes the transaction", echo.transaction_id, "py-call-0")
batch = [Event(transaction_id=f"py-call-{i}", external_subscription_id="py_sub", code="api_call",
               timestamp=ts, properties={}) for i in range(0, 37)]
lago.events.batch_create(BatchEvent(events=batch))
CALLS = 37

flex = Flexprice(api_key_auth=INGEST, server_url=BASE + "/flexprice/v1")
TOKENS = [700, 900, 250]
for i, n in enumerate(TOKENS):
    flex.events.ingest_event(event_name="llm_call", external_customer_id="py_cust",
                             event_id=f"py-tok-{i}", properties={"tokens": str(n), "model": "m1"},
                             timestamp=(NOW - dt.timedelta(minutes=4)).isoformat())
tokens = sum(TOKENS)

# Expected charges, from the plan's terms.
calls_amount = max(CALLS - 10, 0) * Decimal("0.0125")
first = min(tokens, 1000)
rest = max(tokens - 1000, 0)
tokens_amount = first * Decimal("0.001") + (rest * Decimal("0.0005") + Decimal("2.00") if rest else 0)
usage_amount = calls_amount + tokens_amount
cents = lambda d: int((d * 100).quantize(Decimal("1"), rounding="ROUND_HALF_EVEN"))

# Lago: customers.current_usage.
lago_read = LagoClient(api_key=READ, api_url=BASE + "/lago/")
usage = lago_read.customers.current_usage("py_cust", "py_sub")
check("lago amount_cents", usage.amount_cents, cents(usage_amount))
check("lago currency", usage.currency, "USD")
by_metric = {c.billable_metric.code: c for c in usage.charges_usage}
check("lago calls units", Decimal(by_metric["calls"].units), Decimal(CALLS))
check("lago calls events_count", by_metric["calls"].events_count, CALLS)
check("lago calls amount_cents", by_metric["calls"].amount_cents, cents(calls_amount))
check("lago tokens amount_cents", by_metric["tokens"].amount_cents, cents(tokens_amount))
check("lago tokens charge_model", by_metric["tokens"].charge.charge_model, "graduated")

# Lark: customer_access.retrieve_billing_state.
lark = Lark(api_key=READ, base_url=BASE + "/lark")
state = lark.customer_access.retrieve_billing_state("py_cust")
check("lark has_active_subscription", state.has_active_subscription, True)
check("lark rate card", [(s.rate_card_id, s.subscription_id) for s in state.active_subscriptions],
      [("team", "py_sub")])
check("lark has_overage_for_usage", state.has_overage_for_usage, True)
check("lark usage_data", [(u.pricing_metric_id, u.included_units, Decimal(u.used_units))
                          for u in state.usage_data],
      [("calls", 10, Decimal(CALLS)), ("tokens", 0, Decimal(tokens))])

# Flexprice: subscriptions.get_subscription_usage, current period and an explicit window.
flex_read = Flexprice(api_key_auth=READ, server_url=BASE + "/flexprice/v1")
got = flex_read.subscriptions.get_subscription_usage(subscription_id="py_sub")
check("flexprice amount", Decimal(str(got.amount)), usage_amount.quantize(Decimal("0.01")))
check("flexprice currency", got.currency, "USD")
charges = {c.meter_id: c for c in got.charges}
check("flexprice calls quantity", charges["calls"].quantity, float(CALLS))
check("flexprice tokens price model", (charges["tokens"].price.billing_model, charges["tokens"].price.tier_mode),
      ("TIERED", "SLAB"))
check("flexprice tokens tiers", [(t.up_to, Decimal(t.unit_amount)) for t in charges["tokens"].price.tiers],
      [(1000, Decimal("0.001")), (None, Decimal("0.0005"))])
window = flex_read.subscriptions.get_subscription_usage(
    subscription_id="py_sub", start_time=NOW - dt.timedelta(days=1), end_time=NOW - dt.timedelta(hours=1))
check("flexprice amount over a window without usage", Decimal(str(window.amount)), Decimal("0"))
print("all vendor client checks passed")
