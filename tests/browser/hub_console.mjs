// The posd hub's estate console in a real browser: headless Chromium (the system's) driven by
// playwright-core, against a running `posd hub run` with a terminal `posd run` behind it, both
// on the sandbox gateway.
// Environment: HUB_BASE (the hub's [api] listener), POSD_TOKEN (its [api] token),
// TERMINAL_BASE (the terminal's API), POSD_CHROMIUM (the browser binary). Prints one line per
// step; exits non-zero on the first failed check.
import { chromium, request as pwRequest } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.HUB_BASE;
const terminal = process.env.TERMINAL_BASE;
const token = process.env.POSD_TOKEN;
const executablePath = process.env.POSD_CHROMIUM || '/usr/bin/chromium';
if (!base || !terminal || !token) throw new Error('set HUB_BASE, TERMINAL_BASE and POSD_TOKEN');

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

// The terminal's JSON API (what the POS does).
async function api(method, path, body) {
  const r = await fetch(terminal + path, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, json, text };
}

async function finalState(id) {
  for (let i = 0; i < 100; i++) {
    const r = await api('GET', `/v1/payments/${id}?wait=5`);
    if (r.json && r.json.is_final) return r.json;
  }
  throw new Error(`${id} never final`);
}

const code = (last2) => `2812345678901234${last2}`;
const userDataDir = mkdtempSync(join(tmpdir(), 'posd-hub-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  viewport: { width: 1024, height: 768 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
let failed = false;
try {
  const page = await context.newPage();
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });

  // Log in.
  await page.goto(`${base}/console`);
  check(page.url().endsWith('/console/login'), 'a hub page without the cookie goes to the login form');
  check((await page.textContent('body')).includes('hub.toml'), 'the login form says where the hub token lives');
  await page.fill('input[name=token]', 'wrong-token');
  await page.click('button[type=submit]');
  check((await page.textContent('body')).includes('not the API token'), 'a wrong token is refused');
  await page.fill('input[name=token]', token);
  await page.click('button[type=submit]');
  check(page.url().endsWith('/console'), 'the hub token logs in');
  const session = (await context.cookies()).find((c) => c.name === 'posd_console');
  check(session && session.httpOnly && session.secure && session.sameSite === 'Strict',
    'the session cookie is HttpOnly, Secure and SameSite=Strict');

  // A terminal's sale appears, its order ref (markup) shown as text.
  const evil = '<script>alert(1)</script>';
  const sale = await api('POST', '/v1/payments', { amount: '12.34', order_ref: evil, code: code('00') });
  check(sale.status === 202, 'a sale is started on the terminal');
  const saleId = sale.json.payment_request_id;
  check((await finalState(saleId)).state === 'SUCCEEDED', 'the sale succeeds through the hub');
  await page.reload();
  const row = page.locator('tr', { has: page.locator(`a:text-is("${saleId}")`) }).first();
  check(await row.count() === 1, "the terminal's sale appears on the hub's today page");
  check((await row.locator('td.terminal').textContent()) === 'T_A', 'with its terminal');
  check((await row.locator('td.order').textContent()) === evil, 'the order ref shows as text');
  check(dialogs.length === 0 && (await page.locator('td.order script').count()) === 0,
    'the order ref did not run as a script');
  check((await page.locator('svg rect').count()) === 24, 'the hourly chart is drawn');
  check((await page.textContent('main')).includes('Paid per store'), 'per-store totals are shown');

  // Its page: the hub's journal as a timeline.
  await page.click(`a:text-is("${saleId}")`);
  check((await page.locator('td.order').first().textContent()) === evil, 'the payment page escapes the order ref too');
  check((await page.textContent('ol.timeline')).includes('pay_recorded'), "the payment's timeline shows the hub's journal");

  // The terminals page: last seen, and the disabled one.
  await page.goto(`${base}/console/terminals`);
  const ta = page.locator('tr', { has: page.locator('td:text-is("T_A")') }).first();
  check(!(await ta.textContent()).includes('never'), 'the terminal that sold was seen');
  const tb = page.locator('tr', { has: page.locator('td:text-is("T_B")') }).first();
  check((await tb.textContent()).includes('DISABLED'), 'a disabled terminal is listed as disabled');

  // Upload a statement: the gateway shows a charge for a payment the hub holds as failed.
  const declined = await api('POST', '/v1/payments', { amount: '8.00', code: code('80') });
  const declinedId = declined.json.payment_request_id;
  check((await finalState(declinedId)).state === 'FAILED', 'a declined sale fails');
  const now = new Date();
  const utc8 = new Date(now.getTime() + 8 * 3600 * 1000);
  const day = utc8.toISOString().slice(0, 10).replaceAll('-', '');
  const header = 'customerId,referenceMerchantId,referenceStoreId,transactionId,originalTransactionId,transactionRequestId,referenceTransactionId,orderDescription,paymentMethodType,pspName,transactionType,paymentTime,productCode,transactionAmountValue,transactionCurrency';
  const line = `C1,M0001,S01,GW-DECLINED,,${declinedId},,x,CONNECT_WALLET,ALIPAY_CN,PAYMENT,${now.toISOString().replace('Z', '+00:00')},IN_STORE_PAYMENT,8.00,CNY`;
  await page.goto(`${base}/console/reconcile`);
  await page.setInputFiles('input[type=file]', {
    name: `transactionItems_${day}_000.csv`, mimeType: 'text/csv', buffer: Buffer.from(`${header}\r\n${line}\r\n<END>\r\n`),
  });
  await page.click('form[action="/console/reconcile"] button');
  const report = await page.textContent('main');
  check(report.includes('charged_not_at_posd') && report.includes('CRITICAL'), 'the upload reports the critical row');
  check(report.includes('moved to NEEDS_ATTENTION'), "the payment was moved to NEEDS_ATTENTION in the hub's record");
  await page.click('form[action="/console/reconcile/apply"] button');
  check((await page.textContent('main')).includes('queued'), 'apply queues the full refund in the hub queue');
  await page.goto(`${base}/console/queue`);
  check((await page.textContent('main')).includes(declinedId), "the hub's queue lists the refund");
  // The sandbox never charged it, so the refund cannot go through: abandon it with a reason
  // (refused while an instance is sending it; tried again then).
  let abandoned = false;
  for (let i = 0; i < 40 && !abandoned; i++) {
    await page.goto(`${base}/console/queue`);
    const item = page.locator('tr', { has: page.locator(`a:text-is("${declinedId}")`) })
      .filter({ has: page.locator('form[action$="/abandon"]') }).first();
    if (await item.count() === 1) {
      await item.locator('input[name=reason]').fill('<b>refunded by hand</b> in the portal');
      await item.locator('form[action$="/abandon"] button').click();
      const notice = await page.locator('.notice').count() ? await page.textContent('.notice') : '';
      abandoned = notice.includes('abandoned');
    }
    if (!abandoned) await page.waitForTimeout(250);
  }
  check(abandoned, 'a queue item is abandoned with a reason');
  await page.goto(`${base}/console/payments/${declinedId}`);
  check((await page.textContent('ol.timeline')).includes('<b>refunded by hand</b> in the portal'),
    'the reason is in the timeline, as text');
  check((await page.locator('ol.timeline b').count()) === 0, 'the reason was not rendered as markup');
  await page.goto(`${base}/console/queue`);
  await page.click('form[action="/console/queue/replay"]:not(:has(input[name=id])) button');
  check((await page.locator('.notice').count()) === 1, 'replaying everything pending answers with what it did');
  // A broken file is refused with its line.
  await page.goto(`${base}/console/reconcile`);
  await page.setInputFiles('input[type=file]', {
    name: `transactionItems_${day}_001.csv`, mimeType: 'text/csv', buffer: Buffer.from(`${header}\r\n${line}\r\n`),
  });
  await page.click('form[action="/console/reconcile"] button');
  check((await page.textContent('.error')).includes('line 2'), 'a truncated statement is refused with its line');

  // Journal download.
  await page.goto(`${base}/console/journal`);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('main form button')]);
  check(download.suggestedFilename().startsWith('hub_journal_'), 'the journal downloads as a file');

  // Actions without the CSRF token, or without the cookie, are refused.
  await page.goto(`${base}/console/queue`);
  const csrf = await page.getAttribute('input[name=csrf]', 'value');
  const noCsrf = await page.request.post(`${base}/console/queue/replay`, { form: {}, maxRedirects: 0 });
  check(noCsrf.status() === 403, 'a form post without the CSRF token is refused');
  const badCsrf = await page.request.post(`${base}/console/queue/1/abandon`, { form: { csrf: 'x'.repeat(64), reason: 'x' }, maxRedirects: 0 });
  check(badCsrf.status() === 403, 'a form post with a wrong CSRF token is refused');
  const anon = await pwRequest.newContext();
  const noCookie = await anon.post(`${base}/console/queue/1/abandon`, { form: { csrf, reason: 'x' }, maxRedirects: 0 });
  check(noCookie.status() === 403, 'a form post without the cookie is refused');
  const anonPage = await anon.get(`${base}/console/terminals`, { maxRedirects: 0 });
  check(anonPage.status() === 303 && anonPage.headers()['location'] === '/console/login', 'a page without the cookie redirects to the login');
  await anon.dispose();
  await page.goto(`${base}/console/queue`);
  check((await page.locator('td:text-is("ABANDONED")').count()) === 1, 'none of the refused posts abandoned anything');

  // Log out.
  await page.click('form[action="/console/logout"] button');
  await page.goto(`${base}/console/queue`);
  check(page.url().endsWith('/console/login'), 'after logging out the hub console asks for the token again');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await context.close();
}
process.exit(failed ? 1 : 0);
