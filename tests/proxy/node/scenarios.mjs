// One SDK scenario with the official stripe-node, run by tests/proxy/test_sdks_http.py.
//
//   node scenarios.mjs '{"scenario": "create", "host": "127.0.0.1", "port": 7071, "protocol": "http",
//                        "key": "vk_…", "params": {…}}'
//
// The client is built exactly as the README tells a user to: the vault key and host, port and
// protocol, nothing else (default retries, default API version). It prints one JSON line,
// {"sdk", "result" | "error"}, the same shape tests/proxy/sdk_runs.py's run_python returns
// for stripe-python, so one table in the test holds both SDKs to the same outcomes.
// SDK errors are data (exit 0); only a broken invocation exits 1.
import Stripe from 'stripe';

const scenarios = {
  // A charge: the proxy meters POST /v1/payment_intents, so the intent is created and
  // confirmed in one call (confirm=true), then read back.
  async create_and_retrieve(stripe, p) {
    const created = await stripe.paymentIntents.create(pi(p));
    const retrieved = await stripe.paymentIntents.retrieve(created.id);
    return {created: summary(created), retrieved: summary(retrieved)};
  },
  async create(stripe, p) {
    return {created: summary(await stripe.paymentIntents.create(pi(p)))};
  },
  // Auto-pagination: the SDK follows has_more with starting_after, page by page.
  async list_all(stripe, p) {
    const ids = [];
    for await (const intent of stripe.paymentIntents.list({limit: p.limit})) {
      ids.push(intent.id);
    }
    return {ids};
  },
  async list_customers(stripe) {
    return {customers: (await stripe.customers.list({limit: 1})).data.length};
  },
  // Stripe's v2 API (stripe-node sends these as JSON to /v2/...).
  async v2_list(stripe) {
    return {destinations: (await stripe.v2.core.eventDestinations.list()).data.length};
  },
};

function pi(p) {
  return {amount: p.amount, currency: 'usd', confirm: true, payment_method: 'pm_card_visa',
    metadata: {test_tag: p.tag}};
}

function summary(intent) {
  return {id: intent.id, status: intent.status, amount: intent.amount};
}

async function main() {
  const cfg = JSON.parse(process.argv[2] || '{}');
  const run = scenarios[cfg.scenario];
  if (!run) {
    console.error(`unknown scenario ${cfg.scenario}`);
    process.exit(1);
  }
  const stripe = new Stripe(cfg.key, {host: cfg.host, port: cfg.port, protocol: cfg.protocol});
  const out = {sdk: 'node'};
  try {
    out.result = await run(stripe, cfg.params || {});
  } catch (err) {
    if (!(err instanceof Stripe.errors.StripeError)) {
      throw err;
    }
    out.error = {class: err.type, status: err.statusCode ?? null, code: err.code ?? null,
      should_retry: (err.headers || {})['stripe-should-retry'] ?? null};
  }
  // Exit once the answer is out: after a retried request the process was seen to stay alive
  // until stripe-node's 80 s request timeout fired (a timer left on the first attempt), though
  // the SDK had long returned its answer.
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
