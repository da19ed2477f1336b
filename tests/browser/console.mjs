// The posd web console in a real browser: headless Chromium (the system's, not a downloaded
// one) driven by playwright-core, against a running `posd run` on the sandbox gateway.
// Environment: POSD_BASE (http://127.0.0.1:PORT), POSD_TOKEN (the [api] token),
// POSD_CHROMIUM (the browser binary). Prints one line per step; exits non-zero on the first
// failed check.
import { chromium, request as pwRequest } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.POSD_BASE;
const token = process.env.POSD_TOKEN;
const executablePath = process.env.POSD_CHROMIUM || '/usr/bin/chromium';
if (!base || !token) throw new Error('set POSD_BASE and POSD_TOKEN');

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

// The JSON API, with the bearer token (what the POS would do).
async function api(method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
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
const userDataDir = mkdtempSync(join(tmpdir(), 'posd-chromium-'));
// A fresh profile directory every run (playwright passes it as --user-data-dir).
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

  // Without a session every page sends the browser to the login form.
  await page.goto(`${base}/console`);
  check(page.url().endsWith('/console/login'), 'a page without the cookie goes to the login form');
  await page.fill('input[name=token]', 'wrong-token');
  await page.click('button[type=submit]');
  check((await page.textContent('body')).includes('not the API token'), 'a wrong token is refused');
  await page.fill('input[name=token]', token);
  await page.click('button[type=submit]');
  check(page.url().endsWith('/console'), 'the API token logs in');
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'posd_console');
  check(session && session.httpOnly && session.secure && session.sameSite === 'Strict',
    'the session cookie is HttpOnly, Secure and SameSite=Strict');

  // A sale appears, and an order ref that is markup shows as text.
  const evil = '<script>alert(1)</script>';
  const sale = await api('POST', '/v1/payments', { amount: '12.34', order_ref: evil, code: code('56') });
  check(sale.status === 202, 'a sale is started over the API');
  const saleId = sale.json.payment_request_id;
  check((await finalState(saleId)).state === 'SUCCEEDED', 'the sale succeeds');
  await page.reload();
  const row = page.locator('tr', { has: page.locator(`a:text-is("${saleId}")`) }).first();
  check(await row.count() === 1, 'the sale appears on the today page');
  check((await row.locator('td.order').textContent()) === evil, 'the order ref shows as text');
  check(dialogs.length === 0 && (await page.locator('td.order script').count()) === 0,
    'the order ref did not run as a script');
  check((await page.locator('svg rect').count()) === 24, 'the hourly chart is drawn');

  // Refund it in part from its page.
  await page.click(`a:text-is("${saleId}")`);
  check((await page.locator('td.order').first().textContent()) === evil, 'the payment page escapes the order ref too');
  await page.fill('input[name=amount]', '5.00');
  await page.fill('input[name=reason]', 'one coffee returned');
  await page.click('form[action$="/refund"] button');
  check((await page.textContent('.notice')).includes('Refund requested'), 'the refund form is accepted');
  let state = '';
  for (let i = 0; i < 50 && state !== 'PARTIALLY_REFUNDED'; i++) {
    await page.waitForTimeout(100);
    state = (await api('GET', `/v1/payments/${saleId}`)).json.state;
  }
  check(state === 'PARTIALLY_REFUNDED', 'the partial refund is confirmed by the gateway');
  await page.reload();
  check((await page.textContent('body')).includes('one coffee returned'), 'the refund is listed with its reason');

  // Replay the queue: a cancel the gateway did not answer sits in it.
  const stuck = await api('POST', '/v1/payments', { amount: '3.00', code: code('86') });
  const stuckId = stuck.json.payment_request_id;
  check((await finalState(stuckId)).state === 'CANCEL_QUEUED', 'an unanswered cancel is queued');
  await page.goto(`${base}/console/queue`);
  check((await page.textContent('body')).includes(stuckId), 'the queue page lists it');
  // The sandbox answers cancels again after its outage.
  await page.waitForTimeout(2500);
  await page.click('form[action="/console/queue/replay"]:has(input[name=id]) button');
  check((await page.textContent('.notice')).includes('done'), 'replaying the item delivers the cancel');
  check((await api('GET', `/v1/payments/${stuckId}`)).json.state === 'CANCELLED', 'the payment is cancelled');

  // Upload a statement: the gateway shows a charge for a payment posd holds as failed.
  const declined = await api('POST', '/v1/payments', { amount: '8.00', code: code('80') });
  const declinedId = declined.json.payment_request_id;
  check((await finalState(declinedId)).state === 'FAILED', 'a declined sale fails');
  const now = new Date();
  const utc8 = new Date(now.getTime() + 8 * 3600 * 1000);
  const day = utc8.toISOString().slice(0, 10).replaceAll('-', '');
  const header = 'customerId,referenceMerchantId,referenceStoreId,transactionId,originalTransactionId,transactionRequestId,referenceTransactionId,orderDescription,paymentMethodType,pspName,transactionType,paymentTime,productCode,transactionAmountValue,transactionCurrency';
  const line = `C1,M0001,S01,GW-DECLINED,,${declinedId},,x,CONNECT_WALLET,ALIPAY_CN,PAYMENT,${now.toISOString().replace('Z', '+00:00')},IN_STORE_PAYMENT,8.00,CNY`;
  const csv = `${header}\r\n${line}\r\n<END>\r\n`;
  await page.goto(`${base}/console/reconcile`);
  await page.setInputFiles('input[type=file]', {
    name: `transactionItems_${day}_000.csv`, mimeType: 'text/csv', buffer: Buffer.from(csv),
  });
  await page.click('form[action="/console/reconcile"] button');
  const report = await page.textContent('main');
  check(report.includes('charged_not_at_posd') && report.includes('CRITICAL'), 'the upload reports the critical row');
  check(report.includes('moved to NEEDS_ATTENTION'), 'the payment was moved to NEEDS_ATTENTION');
  // A broken file is refused with its line.
  await page.setInputFiles('input[type=file]', {
    name: `transactionItems_${day}_001.csv`, mimeType: 'text/csv', buffer: Buffer.from(`${header}\r\n${line}\r\n`),
  });
  await page.click('form[action="/console/reconcile"] button');
  check((await page.textContent('.error')).includes('line 2'), 'a truncated statement is refused with its line');

  // Today lists it first, as needing attention; resolve it from its page.
  await page.goto(`${base}/console`);
  check((await page.locator('section.attention').textContent()).includes(declinedId), 'NEEDS_ATTENTION comes first on the today page');
  await page.goto(`${base}/console/payments/${declinedId}`);
  await page.selectOption('select[name=as]', 'SUCCEEDED');
  await page.fill('form[action$="/resolve"] input[name=reason]', 'portal shows it paid');
  await page.click('form[action$="/resolve"] button');
  check((await page.textContent('.error')).includes('the gateway says the payment failed'), 'an outcome the gateway contradicts is refused, saying what it says');
  await page.goto(`${base}/console/payments/${declinedId}`);
  await page.selectOption('select[name=as]', 'FAILED');
  await page.fill('form[action$="/resolve"] input[name=reason]', 'portal shows no charge');
  await page.click('form[action$="/resolve"] button');
  check((await page.textContent('.notice')).includes('Resolved as FAILED'), 'resolving as the gateway says is accepted');
  check((await page.textContent('ol.timeline')).includes('portal shows no charge'), 'the reason is in the timeline');

  // Journal download.
  await page.goto(`${base}/console/journal`);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('main form button')]);
  check(download.suggestedFilename().startsWith('journal_T0001_'), 'the journal downloads as a file');

  // Actions without the CSRF token, or without the cookie, are refused.
  const noCsrf = await page.request.post(`${base}/console/queue/replay`, { form: { id: '1' }, maxRedirects: 0 });
  check(noCsrf.status() === 403, 'a form post without the CSRF token is refused');
  const badCsrf = await page.request.post(`${base}/console/payments/${saleId}/refund`, { form: { csrf: 'x'.repeat(64), amount: '1.00' }, maxRedirects: 0 });
  check(badCsrf.status() === 403, 'a form post with a wrong CSRF token is refused');
  const anon = await pwRequest.newContext();
  const csrf = await page.getAttribute('input[name=csrf]', 'value');
  const noCookie = await anon.post(`${base}/console/payments/${saleId}/refund`, { form: { csrf, amount: '1.00' }, maxRedirects: 0 });
  check(noCookie.status() === 403, 'a form post without the cookie is refused');
  const anonPage = await anon.get(`${base}/console/queue`, { maxRedirects: 0 });
  check(anonPage.status() === 303 && anonPage.headers()['location'] === '/console/login', 'a page without the cookie redirects to the login');
  check((await api('GET', `/v1/payments/${saleId}`)).json.refunded_amount === '5.00', 'none of the refused posts refunded anything');
  await anon.dispose();

  // Log out: the cookie no longer opens pages.
  await page.goto(`${base}/console`);
  await page.click('form[action="/console/logout"] button');
  await page.goto(`${base}/console/queue`);
  check(page.url().endsWith('/console/login'), 'after logging out the console asks for the token again');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await context.close();
}
process.exit(failed ? 1 : 0);
