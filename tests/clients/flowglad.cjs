// Flowglad's official Node client against a running meterhouse: customers.retrieveBilling.
// Run by tests/clients.rs after vendor_clients.py (which creates the `team` plan: 20.00 a month,
// calls at 0.0125 past 10 included, tokens graduated). Sends its own customer's events through
// meterhouse's API and checks the billing answer against values computed here.
const { Flowglad } = require('@flowglad/node');

const BASE = process.env.METERHOUSE_URL;
const { ADMIN_KEY, INGEST_KEY, READ_KEY } = process.env;

async function post(path, key, body) {
  const r = await fetch(BASE + path, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (r.status >= 300) throw new Error(`${path}: ${r.status} ${await r.text()}`);
}

function check(what, got, expected) {
  const [g, e] = [JSON.stringify(got), JSON.stringify(expected)];
  if (g !== e) throw new Error(`${what}: got ${g}, expected ${e}`);
  console.log(`ok  ${what} = ${g}`);
}

(async () => {
  const start = new Date(Date.now() - 3 * 86400e3).toISOString();
  await post('/v1/customers', ADMIN_KEY, { external_id: 'node_cust', name: 'Node', email: 'n@example.test' });
  await post('/v1/subscriptions', ADMIN_KEY, { external_id: 'node_sub', customer: 'node_cust', plan: 'team', start_date: start });
  const CALLS = 12;
  const TOKENS = 300;
  const now = Date.now();
  const events = [];
  for (let i = 0; i < CALLS; i++) events.push({ id: `node-call-${i}`, customer: 'node_cust', type: 'api_call', timestamp: now - 60e3 });
  events.push({ id: 'node-tok', customer: 'node_cust', type: 'llm_call', timestamp: now - 60e3, properties: { tokens: TOKENS, model: 'm1' } });
  await post('/v1/events', INGEST_KEY, events);

  const client = new Flowglad({ apiKey: READ_KEY, baseURL: BASE + '/flowglad' });
  const billing = await client.customers.retrieveBilling('node_cust');
  check('customer externalId', billing.customer.externalId, 'node_cust');
  check('customer email', billing.customer.email, 'n@example.test');
  const current = billing.currentSubscription;
  check('current subscription', [current.id, current.status, current.interval, current.intervalCount], ['node_sub', 'active', 'month', 1]);
  check('current period start', current.currentBillingPeriodStart, Date.parse(start));
  // Balances: included units left (10 calls included, no tokens included).
  const balances = Object.fromEntries(current.experimental.usageMeterBalances.map((b) => [b.slug, b.availableBalance]));
  check('usage meter balances', balances, { calls: 10 - CALLS, tokens: -TOKENS });
  // Prices in cents: 20.00 base = 2000; a call 0.0125 = 1.25; tokens' first tier 0.001 = 0.1.
  const items = Object.fromEntries(current.subscriptionItems.map((i) => [i.priceId, i.unitPrice]));
  check('subscription item unit prices', items, { base: 2000, calls: 1.25, tokens: 0.1 });
  check('empty lists', [billing.invoices, billing.paymentMethods, billing.purchases], [[], [], []]);
  const team = billing.pricingModel.products.find((p) => p.id === 'team');
  check('team product prices', team.prices.map((p) => [p.id, p.type]), [['base', 'subscription'], ['calls', 'usage'], ['tokens', 'usage']]);
  // Errors come back as the client's typed errors.
  try {
    await client.customers.retrieveBilling('nobody');
    throw new Error('an unknown customer was answered');
  } catch (e) {
    check('unknown customer status', e.status, 404);
  }
  console.log('all flowglad client checks passed');
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
