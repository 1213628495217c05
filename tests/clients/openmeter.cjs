// OpenMeter's official Node SDK (@openmeter/sdk) against a running meterhouse: its event client,
// pointed at the `/openmeter` prefix, ingests one CloudEvent and then a batch (it sends them as
// application/cloudevents-batch+json). tests/clients.rs then reads the customer's usage back.
const { OpenMeter } = require('@openmeter/sdk');

async function main() {
  const openmeter = new OpenMeter({
    baseUrl: `${process.env.METERHOUSE_URL}/openmeter`,
    apiKey: process.env.INGEST_KEY,
  });
  const event = (id, tokens) => ({
    id,
    source: 'openmeter-sdk-test',
    type: 'llm_call',
    subject: 'om_customer',
    data: { tokens, model: 'gpt-x' },
  });
  await openmeter.events.ingest(event('om-1', 11));
  await openmeter.events.ingest([event('om-2', 22), event('om-3', 33)]);
  // The same event again: counted once.
  await openmeter.events.ingest(event('om-1', 11));
  console.log('openmeter events ingested');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
