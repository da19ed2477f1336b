//! The console's pages as server-rendered HTML (maud: every value is escaped unless marked
//! otherwise, and nothing here marks user text otherwise). No JavaScript; large type and
//! wide touch targets for a tablet at the counter.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::gate::{Site, TERMINAL};
use crate::api::journal::JournalRowJson;
use crate::api::queue::{DepthJson, QueueItemJson};
use crate::api::wire::PaymentJson;
use crate::backoffice::reconcile::matcher::{Kind, Report};

const CSS: &str = r#"
body{font:18px/1.45 system-ui,sans-serif;margin:0;color:#111;background:#f6f6f4}
header{background:#1d3557;color:#fff;padding:.6em 1em;display:flex;flex-wrap:wrap;gap:1em;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600;padding:.3em .5em}
header form{margin-left:auto}
main{padding:1em;max-width:70em}
h1{font-size:1.5em;margin:.2em 0 .6em}
h2{font-size:1.2em;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.4em .5em;border-bottom:1px solid #ddd;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.attention{background:#fde8e8;border-left:6px solid #c1121f;padding:.6em 1em;margin:.6em 0}
.notice{background:#e7f5e9;border-left:6px solid #2d6a4f;padding:.6em 1em;margin:.6em 0}
.error{background:#fde8e8;border-left:6px solid #c1121f;padding:.6em 1em;margin:.6em 0}
.critical{color:#c1121f;font-weight:700}
.mono{font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all}
form.inline{display:inline}
input,select,button{font:inherit;padding:.45em .6em;margin:.2em 0;min-height:2.4em}
button{background:#1d3557;color:#fff;border:0;border-radius:4px;padding:.45em 1em;cursor:pointer}
button.danger{background:#c1121f}
label{display:block;margin:.4em 0}
ol.timeline{list-style:none;padding:0;border-left:3px solid #1d3557;margin-left:.5em}
ol.timeline li{padding:.2em 0 .6em 1em}
.tiles{display:flex;flex-wrap:wrap;gap:.8em}
.tile{background:#fff;padding:.6em 1em;border-radius:6px;min-width:9em}
.tile b{display:block;font-size:1.4em}
svg{background:#fff;max-width:100%;height:auto}
"#;

/// The terminal console's page frame.
pub fn page(title: &str, csrf: Option<&str>, notice: Option<&str>, body: Markup) -> Markup {
    page_for(&TERMINAL, title, csrf, notice, body)
}

/// The page frame of a console: navigation (with logout when logged in) around `body`.
pub fn page_for(
    site: &Site,
    title: &str,
    csrf: Option<&str>,
    notice: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (site.name) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    strong { (site.name) }
                    @if let Some(c) = csrf {
                        @for (href, label) in site.nav {
                            a href=(href) { (label) }
                        }
                        form method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(c);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(n) = notice {
                        p.notice role="status" { (n) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The login form of a console.
pub fn login_for(site: &Site, error: Option<&str>) -> Markup {
    page_for(
        site,
        "Log in",
        None,
        None,
        html! {
            h1 { "Log in to the back office" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/console/login" {
                label { "API token (" (site.token_hint) ")"
                    br;
                    input type="password" name="token" autocomplete="current-password" required autofocus;
                }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// A page of the terminal console that only says what went wrong.
pub fn problem(csrf: Option<&str>, title: &str, message: &str, back: &str) -> Markup {
    problem_for(&TERMINAL, csrf, title, message, back)
}

/// A page that only says what went wrong.
pub fn problem_for(
    site: &Site,
    csrf: Option<&str>,
    title: &str,
    message: &str,
    back: &str,
) -> Markup {
    page_for(
        site,
        title,
        csrf,
        None,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href=(back) { "Back" } }
        },
    )
}

/// Totals of one state and currency today.
pub struct Total {
    /// State.
    pub state: String,
    /// Currency.
    pub currency: String,
    /// Count.
    pub count: usize,
    /// Sum, decimal.
    pub total: String,
}

/// Everything the today page shows.
pub struct Today {
    /// The local date.
    pub date: String,
    /// NEEDS_ATTENTION payments (any day) with their reasons.
    pub attention: Vec<(JournalRowJson, String)>,
    /// Totals by state and currency.
    pub totals: Vec<Total>,
    /// Paid amount per local hour (0–23), minor units, in `chart_currency`.
    pub hourly: [i64; 24],
    /// Sales per local hour.
    pub hourly_count: [usize; 24],
    /// The currency charted.
    pub chart_currency: String,
    /// Its exponent.
    pub chart_exponent: u8,
    /// Payments not final.
    pub open: Vec<JournalRowJson>,
    /// Today's payments, newest first.
    pub recent: Vec<JournalRowJson>,
    /// The queue's size.
    pub depth: DepthJson,
    /// Its oldest pending item.
    pub oldest: Option<QueueItemJson>,
}

/// A link to a payment's page.
pub fn payment_link(id: &str) -> Markup {
    html! { a.mono href={ "/console/payments/" (id) } { (id) } }
}

fn chart(t: &Today) -> Markup {
    hourly_chart(
        &t.hourly,
        &t.hourly_count,
        &t.chart_currency,
        t.chart_exponent,
    )
}

/// An inline SVG bar chart of the amount paid per hour (minor units in `currency`).
pub fn hourly_chart(
    hourly: &[i64; 24],
    counts: &[usize; 24],
    currency: &str,
    exponent: u8,
) -> Markup {
    let max = hourly.iter().copied().max().unwrap_or(0).max(1);
    let (w, h, pad) = (24 * 30 + 40, 180, 20);
    let div = 10i64.pow(u32::from(exponent));
    html! {
        svg width=(w) height=(h + 40) viewBox={ "0 0 " (w) " " (h + 40) } role="img"
            aria-label={ "Paid per hour today in " (currency) } {
            title { "Paid per hour today (" (currency) ")" }
            line x1=(pad) y1=(h) x2=(w - 10) y2=(h) stroke="#333" {}
            @for (hour, v) in hourly.iter().enumerate() {
                @let bh = (v * (h as i64 - pad as i64) / max) as usize;
                @let x = pad + hour * 30 + 4;
                rect x=(x) y=(h - bh) width="22" height=(bh) fill="#457b9d" {
                    title { (format!("{hour:02}:00 – {} sales, {} {}", counts[hour], v / div, currency)) }
                }
                @if hour % 3 == 0 {
                    text x=(x) y=(h + 18) font-size="12" { (format!("{hour:02}")) }
                }
            }
            text x=(pad) y=(h + 36) font-size="12" { "hour of the day; bar height: amount paid" }
        }
    }
}

/// The today page.
pub fn today(csrf: &str, notice: Option<&str>, t: &Today) -> Markup {
    page(
        "Today",
        Some(csrf),
        notice,
        html! {
            meta http-equiv="refresh" content="30";
            h1 { "Today, " (t.date) }
            @if !t.attention.is_empty() {
                section.attention aria-label="Needs attention" {
                    h2 { "Needs attention (" (t.attention.len()) ")" }
                    table {
                        tr { th { "Payment" } th.num { "Amount" } th { "Order" } th { "Reason" } }
                        @for (p, reason) in &t.attention {
                            tr {
                                td { (payment_link(&p.payment_request_id)) }
                                td.num { (p.amount) " " (p.currency) }
                                td { (p.order_ref.as_deref().unwrap_or("")) }
                                td { (reason) }
                            }
                        }
                    }
                }
            }
            h2 { "Sales by state" }
            div.tiles {
                @if t.totals.is_empty() { p { "No sales yet today." } }
                @for x in &t.totals {
                    div.tile { (x.state) b { (x.count) } (x.total) " " (x.currency) }
                }
            }
            h2 { "Paid per hour (" (t.chart_currency) ")" }
            (chart(t))
            h2 { "Queue" }
            p {
                (t.depth.pending) " pending, " (t.depth.dead) " dead"
                @if let Some(o) = &t.oldest {
                    "; oldest: " (o.kind) " of " (payment_link(&o.payment_request_id))
                    " queued " (o.created_at) " (" (o.attempts) " attempts)"
                }
                " — " a href="/console/queue" { "open the queue" }
            }
            h2 { "Open payments" }
            @if t.open.is_empty() { p { "None." } } @else { (payment_table(&t.open)) }
            h2 { "Today's payments" }
            @if t.recent.is_empty() { p { "None yet." } } @else { (payment_table(&t.recent)) }
        },
    )
}

fn payment_table(rows: &[JournalRowJson]) -> Markup {
    html! {
        table {
            tr { th { "Time" } th { "Payment" } th { "Order" } th.num { "Amount" } th { "State" } }
            @for p in rows {
                tr {
                    td { (p.local_time.get(11..19).unwrap_or(&p.local_time)) }
                    td { (payment_link(&p.payment_request_id)) }
                    td.order { (p.order_ref.as_deref().unwrap_or("")) }
                    td.num { (p.amount) " " (p.currency) }
                    td { (p.state) }
                }
            }
        }
    }
}

/// The payment page: facts, timeline, refunds, and its forms.
pub fn payment(csrf: &str, notice: Option<&str>, p: &PaymentJson) -> Markup {
    let id = &p.payment_request_id;
    let can_refund = matches!(p.state.as_str(), "SUCCEEDED" | "PARTIALLY_REFUNDED");
    page(
        "Payment",
        Some(csrf),
        notice,
        html! {
            h1 { "Payment " span.mono { (id) } }
            @if let Some(r) = &p.attention_reason {
                @if p.state == "NEEDS_ATTENTION" { p.attention { strong { "Needs attention: " } (r) } }
            }
            table {
                tr { th { "State" } td { strong { (p.state) } } }
                tr { th { "Amount" } td { (p.amount) " " (p.currency) } }
                tr { th { "Refunded" } td { (p.refunded_amount) " " (p.currency) } }
                tr { th { "Order" } td.order { (p.order_ref.as_deref().unwrap_or("")) } }
                tr { th { "Code" } td { (p.code_masked.as_deref().unwrap_or("")) } }
                tr { th { "paymentId" } td.mono { (p.payment_id.as_deref().unwrap_or("")) } }
                tr { th { "Result" } td { (p.result_code.as_deref().unwrap_or("")) " " (p.result_message.as_deref().unwrap_or("")) } }
            }
            h2 { "Timeline" }
            ol.timeline {
                @for e in &p.events {
                    li {
                        strong { (e.to) } " " small { (e.at) } br;
                        (e.cause)
                        @if let Some(c) = &e.result_code { " [" (c) "]" }
                    }
                }
            }
            h2 { "Refunds" }
            @if p.refunds.is_empty() { p { "None." } } @else {
                table {
                    tr { th { "Refund" } th.num { "Amount" } th { "State" } th { "Reason" } }
                    @for r in &p.refunds {
                        tr {
                            td.mono { (r.refund_request_id) }
                            td.num { (r.amount) " " (p.currency) }
                            td { (r.state) }
                            td { (r.reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Slip" }
            form method="post" action={ "/console/payments/" (id) "/reprint" } {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Reprint the slip" }
            }
            @if can_refund {
                h2 { "Refund" }
                form method="post" action={ "/console/payments/" (id) "/refund" } {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Amount in " (p.currency) " (empty: everything not yet refunded)" br;
                        input name="amount" inputmode="decimal" placeholder="5.00"; }
                    label { "Reason" br; input name="reason" maxlength="256"; }
                    button.danger type="submit" { "Refund" }
                }
            }
            @if p.state == "NEEDS_ATTENTION" {
                h2 { "Resolve" }
                p { "Check the payment in the gateway's merchant portal first. posd asks the gateway once and refuses an outcome the gateway contradicts." }
                form method="post" action={ "/console/payments/" (id) "/resolve" } {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "The portal shows it as" br;
                        select name="as" {
                            option value="SUCCEEDED" { "SUCCEEDED (paid)" }
                            option value="FAILED" { "FAILED (not charged)" }
                            option value="CANCELLED" { "CANCELLED (reversed)" }
                            option value="REFUNDED" { "REFUNDED (money returned)" }
                        }
                    }
                    label { "What you checked" br; input name="reason" required maxlength="256"; }
                    button type="submit" { "Resolve" }
                }
            }
        },
    )
}

/// The queue page.
pub fn queue(
    csrf: &str,
    notice: Option<&str>,
    items: &[QueueItemJson],
    depth: &DepthJson,
) -> Markup {
    page(
        "Queue",
        Some(csrf),
        notice,
        html! {
            h1 { "Reversal queue" }
            p { (depth.pending) " pending, " (depth.dead) " dead letters" }
            form method="post" action="/console/queue/replay" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Replay everything pending now" }
            }
            @if items.is_empty() { p { "The queue is empty." } } @else {
                table {
                    tr { th { "Item" } th { "Kind" } th { "Status" } th { "Payment" } th.num { "Attempts" } th { "Last error / resolution" } th { "" } }
                    @for i in items {
                        tr {
                            td { (i.id) }
                            td { (i.kind) }
                            td { (i.status) }
                            td { (payment_link(&i.payment_request_id)) }
                            td.num { (i.attempts) }
                            td { (i.resolution.as_deref().or(i.last_error.as_deref()).unwrap_or("")) }
                            td {
                                @if i.status == "PENDING" {
                                    form.inline method="post" action="/console/queue/replay" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="id" value=(i.id);
                                        button type="submit" { "Replay" }
                                    }
                                }
                                @if i.status == "PENDING" || i.status == "DEAD" {
                                    form method="post" action={ "/console/queue/" (i.id) "/abandon" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input name="reason" required placeholder="why give up" maxlength="256";
                                        button.danger type="submit" { "Abandon" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The terminal's reconciliation page.
pub fn reconcile(csrf: &str, report: Option<(&str, &Report)>, error: Option<&str>) -> Markup {
    reconcile_for(
        &TERMINAL,
        "posd matches every row against its journal.",
        csrf,
        report,
        error,
    )
}

/// The reconciliation page of a console: the upload form, and the report of the last upload.
pub fn reconcile_for(
    site: &Site,
    against: &str,
    csrf: &str,
    report: Option<(&str, &Report)>,
    error: Option<&str>,
) -> Markup {
    page_for(
        site,
        "Reconciliation",
        Some(csrf),
        None,
        html! {
            h1 { "Reconciliation" }
            p { "Upload the gateway's Transaction Items files (transactionItems_YYYYMMDD_NNN.csv, one day in UTC+8). " (against) }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/console/reconcile" enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Statement files" br; input type="file" name="files" multiple required accept=".csv,text/csv"; }
                button type="submit" { "Reconcile" }
            }
            @if let Some((upload, r)) = report {
                (report_view(r))
                @if r.critical().any(|f| !f.done.as_deref().unwrap_or("").contains("queued")) && !r.applied {
                    form method="post" action="/console/reconcile/apply" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="upload" value=(upload);
                        p { "Apply queues the full refund of every payment the gateway charged and posd did not." }
                        button.danger type="submit" { "Apply: queue the refunds" }
                    }
                }
            }
        },
    )
}

fn report_view(r: &Report) -> Markup {
    html! {
        h2 { "Report" @if r.applied { " (applied)" } }
        ul {
            @for f in &r.files { li { (f.name) ": " (f.rows) " rows" @if let Some(d) = &f.date { ", day " (d) } } }
            @for u in &r.units { li { "Amounts in " (u.currency) ": " (u.unit) " — " (u.evidence) } }
            @if r.out_of_scope > 0 { li { (r.out_of_scope) " rows of other stores or terminals skipped" } }
        }
        p.counts {
            @for (k, n) in r.counts() { span.tile { (k.as_str()) ": " b { (n) } } " " }
        }
        @if !r.has_discrepancies() { p.notice { "All matched." } }
        table {
            tr { th { "" } th { "Kind" } th { "Line" } th { "Type" } th { "Payment / refund" } th.num { "Statement" } th.num { "posd" } th { "posd state" } th { "Detail" } }
            @for f in r.findings.iter().filter(|f| f.kind != Kind::Matched) {
                tr {
                    td { @if f.critical { span.critical { "CRITICAL" } } }
                    td { (f.kind.as_str()) }
                    td { (f.line.map(|l| l.to_string()).unwrap_or_default()) }
                    td { (f.transaction_type) }
                    td {
                        @if let Some(id) = &f.payment_request_id { (payment_link(id)) }
                        @if let Some(rid) = &f.refund_request_id { br; span.mono { (rid) } }
                    }
                    td.num { (f.statement_amount.as_deref().unwrap_or("")) }
                    td.num { (f.posd_amount.as_deref().unwrap_or("")) }
                    td { (f.posd_state.as_deref().unwrap_or("")) }
                    td { (f.detail) @if let Some(d) = &f.done { br; strong { (d) } } br; small { (f.kind.advice()) } }
                }
            }
        }
    }
}

/// The journal download form.
pub fn journal(csrf: &str, today: &str) -> Markup {
    page(
        "Journal",
        Some(csrf),
        None,
        html! {
            h1 { "Journal download" }
            p { "One row per payment and per refund, with the terminal, the store, minor units, the gateway's time and the UTC+8 business date." }
            form method="get" action="/console/journal/download" {
                label { "From (local date)" br; input type="date" name="since" value=(today) required; }
                label { "To (local date, included)" br; input type="date" name="until" value=(today); }
                label { "Format" br;
                    select name="format" { option value="csv" { "CSV" } option value="json" { "JSON" } }
                }
                button type="submit" { "Download" }
            }
        },
    )
}
