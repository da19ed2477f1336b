//! The hub console's pages (maud: every value escaped; nothing marks user text otherwise), in
//! the terminal console's frame and style.

use maud::{html, Markup};

use super::data::{
    decimal, show_time, EventLine, PaymentLine, QueueLine, RefundLine, TerminalLine,
};
use crate::api::console::gate::Site;
use crate::api::console::views::{hourly_chart, page_for, payment_link};

/// The hub's console.
pub static HUB: Site = Site {
    name: "posd hub",
    nav: &[
        ("/console", "Today"),
        ("/console/terminals", "Terminals"),
        ("/console/queue", "Queue"),
        ("/console/reconcile", "Reconciliation"),
        ("/console/journal", "Journal"),
    ],
    token_hint: "[api] token in hub.toml",
};

/// A count and total.
pub struct Total {
    /// Grouping key (a state or a store).
    pub key: String,
    /// Currency.
    pub currency: String,
    /// Count.
    pub count: usize,
    /// Sum, decimal.
    pub total: String,
}

/// Everything the today page shows.
pub struct Today {
    /// The UTC+8 date.
    pub date: String,
    /// NEEDS_ATTENTION payments (any day).
    pub attention: Vec<PaymentLine>,
    /// By state and currency.
    pub by_state: Vec<Total>,
    /// Paid, by store and currency.
    pub by_store: Vec<Total>,
    /// Paid per UTC+8 hour, minor units of `chart_currency`.
    pub hourly: [i64; 24],
    /// Sales per hour.
    pub hourly_count: [usize; 24],
    /// Charted currency.
    pub chart_currency: String,
    /// Its exponent.
    pub chart_exponent: u8,
    /// Not final.
    pub open: Vec<PaymentLine>,
    /// Today's, newest first.
    pub recent: Vec<PaymentLine>,
    /// Queue: pending, oldest age in seconds, dead.
    pub queue: (i64, u64, i64),
}

fn tiles(totals: &[Total], empty: &str) -> Markup {
    html! {
        div.tiles {
            @if totals.is_empty() { p { (empty) } }
            @for x in totals {
                div.tile { (x.key) b { (x.count) } (x.total) " " (x.currency) }
            }
        }
    }
}

fn payment_table(rows: &[PaymentLine]) -> Markup {
    html! {
        table {
            tr { th { "Time (UTC+8)" } th { "Terminal" } th { "Store" } th { "Payment" } th { "Order" } th.num { "Amount" } th { "State" } }
            @for p in rows {
                tr {
                    td { (show_time(p.received_ms).get(11..).unwrap_or("")) }
                    td.terminal { (p.client_id) }
                    td { (p.store_id) }
                    td { (payment_link(&p.payment_request_id)) }
                    td.order { (p.order_ref.as_deref().unwrap_or("")) }
                    td.num { (p.amount()) }
                    td { (p.state) }
                }
            }
        }
    }
}

/// The today page across terminals.
pub fn today(csrf: &str, notice: Option<&str>, t: &Today) -> Markup {
    page_for(
        &HUB,
        "Today",
        Some(csrf),
        notice,
        html! {
            meta http-equiv="refresh" content="30";
            h1 { "Today, " (t.date) " (UTC+8), every terminal" }
            @if !t.attention.is_empty() {
                section.attention aria-label="Needs attention" {
                    h2 { "Needs attention (" (t.attention.len()) ")" }
                    table {
                        tr { th { "Payment" } th { "Terminal" } th.num { "Amount" } th { "Order" } th { "Reason" } }
                        @for p in &t.attention {
                            tr {
                                td { (payment_link(&p.payment_request_id)) }
                                td { (p.client_id) }
                                td.num { (p.amount()) }
                                td.order { (p.order_ref.as_deref().unwrap_or("")) }
                                td { (p.attention_reason.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
            h2 { "Payments by state" }
            (tiles(&t.by_state, "No payments yet today."))
            h2 { "Paid per store" }
            (tiles(&t.by_store, "Nothing paid yet today."))
            h2 { "Paid per hour (" (t.chart_currency) ")" }
            (hourly_chart(&t.hourly, &t.hourly_count, &t.chart_currency, t.chart_exponent))
            h2 { "Queue" }
            p {
                (t.queue.0) " pending (oldest " (t.queue.1) " s), " (t.queue.2) " dead — "
                a href="/console/queue" { "open the queue" }
            }
            h2 { "Open payments" }
            @if t.open.is_empty() { p { "None." } } @else { (payment_table(&t.open)) }
            h2 { "Today's payments" }
            @if t.recent.is_empty() { p { "None yet." } } @else { (payment_table(&t.recent)) }
        },
    )
}

/// The terminals page.
pub fn terminals(csrf: &str, rows: &[TerminalLine]) -> Markup {
    page_for(
        &HUB,
        "Terminals",
        Some(csrf),
        None,
        html! {
            h1 { "Terminals" }
            p { "Register, disable and enable terminals with posd hub terminal add|disable|enable." }
            table {
                tr { th { "Client id" } th { "Name" } th { "Merchant" } th { "Store" } th { "Terminal id" } th { "Enabled" } th { "Last seen (UTC+8)" } th.num { "Today" } }
                @for t in rows {
                    tr.disabled[!t.terminal.enabled] {
                        td.mono { (t.terminal.client_id) }
                        td { (t.terminal.name.as_deref().unwrap_or("")) }
                        td { (t.terminal.merchant_id) }
                        td { (t.terminal.store_id) }
                        td { (t.terminal.terminal_id) }
                        td { @if t.terminal.enabled { "yes" } @else { strong.critical { "DISABLED" } } }
                        td { (t.last_seen_ms.map(show_time).unwrap_or_else(|| "never".into())) }
                        td.num { (t.today) }
                    }
                }
            }
        },
    )
}

/// A payment: facts, journal as a timeline, refunds, queue items.
pub fn payment(
    csrf: &str,
    p: &PaymentLine,
    events: &[EventLine],
    refunds: &[RefundLine],
    items: &[QueueLine],
) -> Markup {
    page_for(
        &HUB,
        "Payment",
        Some(csrf),
        None,
        html! {
            h1 { "Payment " span.mono { (p.payment_request_id) } }
            @if p.state == "NEEDS_ATTENTION" {
                p.attention { strong { "Needs attention: " } (p.attention_reason.as_deref().unwrap_or("")) }
            }
            table {
                tr { th { "State" } td { strong { (p.state) } } }
                tr { th { "Amount" } td { (p.amount()) } }
                tr { th { "Refunded" } td { (p.currency.as_deref().map(|c| decimal(p.refunded_minor, c)).unwrap_or_default()) } }
                tr { th { "Terminal" } td { (p.client_id) " (" (p.terminal_id) ", store " (p.store_id) ", merchant " (p.merchant_id) ")" } }
                tr { th { "Order" } td.order { (p.order_ref.as_deref().unwrap_or("")) } }
                tr { th { "paymentId" } td.mono { (p.payment_id.as_deref().unwrap_or("")) } }
                tr { th { "Received" } td { (show_time(p.received_ms)) " (UTC+8)" } }
            }
            h2 { "Timeline" }
            ol.timeline {
                @for e in events {
                    li {
                        strong { (e.kind) }
                        @if let Some(to) = &e.to { " → " (to) }
                        " " small { (show_time(e.at_ms)) " · " (e.instance) } br;
                        (e.detail.as_deref().unwrap_or(""))
                        @if let Some(c) = &e.result_code { " [" (c) "]" }
                    }
                }
            }
            h2 { "Refunds" }
            @if refunds.is_empty() { p { "None." } } @else {
                table {
                    tr { th { "Refund" } th.num { "Amount" } th { "State" } th { "Origin" } th { "Result" } }
                    @for r in refunds {
                        tr {
                            td.mono { (r.refund_request_id) }
                            td.num { (decimal(r.amount_minor, &r.currency)) " " (r.currency) }
                            td { (r.state) }
                            td { (r.origin) }
                            td { (r.result_code.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Queue items" }
            @if items.is_empty() { p { "None." } } @else { (queue_table(csrf, items)) }
        },
    )
}

fn queue_table(csrf: &str, items: &[QueueLine]) -> Markup {
    html! {
        table {
            tr { th { "Item" } th { "Kind" } th { "Origin" } th { "Status" } th { "Payment" } th.num { "Attempts" } th { "Queued (UTC+8)" } th { "Last error" } th { "" } }
            @for i in items {
                tr {
                    td { (i.id) }
                    td { (i.kind) }
                    td { (i.origin) }
                    td { (i.status) }
                    td { (payment_link(&i.payment_request_id)) }
                    td.num { (i.attempts) }
                    td { (show_time(i.created_ms)) }
                    td { (i.last_error.as_deref().unwrap_or("")) }
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
}

/// The queue page.
pub fn queue(
    csrf: &str,
    notice: Option<&str>,
    items: &[QueueLine],
    stats: (i64, u64, i64),
) -> Markup {
    page_for(
        &HUB,
        "Queue",
        Some(csrf),
        notice,
        html! {
            h1 { "The hub's queue" }
            p { (stats.0) " pending (oldest " (stats.1) " s), " (stats.2) " dead letters. Every cancel and refund the hub owes upstream, sent by the instances' workers." }
            form method="post" action="/console/queue/replay" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Replay everything pending now" }
            }
            @if items.is_empty() { p { "The queue is empty." } } @else { (queue_table(csrf, items)) }
        },
    )
}

/// The journal download form.
pub fn journal(csrf: &str, today: &str) -> Markup {
    page_for(
        &HUB,
        "Journal",
        Some(csrf),
        None,
        html! {
            h1 { "Journal download" }
            p { "One row per payment and per refund of every terminal, with merchant, store, terminal, minor units and the UTC+8 business date." }
            form method="get" action="/console/journal/download" {
                label { "From (UTC+8 date)" br; input type="date" name="since" value=(today) required; }
                label { "To (UTC+8 date, included)" br; input type="date" name="until" value=(today); }
                label { "Format" br;
                    select name="format" { option value="csv" { "CSV" } option value="json" { "JSON" } }
                }
                button type="submit" { "Download" }
            }
        },
    )
}
