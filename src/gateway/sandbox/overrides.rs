//! Sticky, time-boxed scenario overrides and delayed outcomes, for both dialects: a POS
//! developer rehearses the slow paths without picking codes.
//!
//! `PUT /sandbox/override` with `{"scenario": "83", "for": "30m"}` makes every *new* pay take
//! row 83 whatever its code, until the time box ends (at most 2 h; the rows' own digits rule
//! again afterwards). `{"approve_after": "60s", "for": "30m"}` makes new pays answer "in
//! process" and approve on the first inquiry at least that long after the pay: the inquiry
//! loop's deadline and cancel paths play out with real codes. `GET` shows the override,
//! `DELETE` ends it. Overrides and pending approvals live in the sandbox's own database, so a
//! restart keeps them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::scenario::{Scenario, Status};
use super::server::App;
use super::store::PaymentRow;

/// The admin path.
pub const PATH: &str = "/sandbox/override";
/// The longest time box.
pub const MAX_FOR: Duration = Duration::from_secs(2 * 3600);
/// The time box when none is given.
pub const DEFAULT_FOR: Duration = Duration::from_secs(30 * 60);
/// The row a delayed outcome plays until it approves (pay in process, inquiries pending).
pub const DELAY_ROW: u8 = 83;

/// Tables of this module, created beside the payments.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS scenario_override (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    scenario         INTEGER,             -- two digits of the table, or NULL with a delay
    approve_after_ms INTEGER,             -- a delayed approval, or NULL
    until_ms         INTEGER NOT NULL     -- wall clock end of the time box
);
CREATE TABLE IF NOT EXISTS delayed_approvals (
    payment_request_id TEXT PRIMARY KEY,
    approve_at_ms      INTEGER NOT NULL
);
";

/// An active override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Override {
    /// The row every new pay takes.
    pub scenario: Option<u8>,
    /// New pays approve this long after they arrive.
    pub approve_after_ms: Option<i64>,
    /// When the override ends (ms since the epoch).
    pub until_ms: i64,
}

/// The override in force at `now_ms`.
pub fn active(c: &Connection, now_ms: i64) -> rusqlite::Result<Option<Override>> {
    c.query_row(
        "SELECT scenario, approve_after_ms, until_ms FROM scenario_override WHERE id = 1",
        [],
        |r| {
            Ok(Override {
                scenario: r.get::<_, Option<i64>>(0)?.map(|n| n as u8),
                approve_after_ms: r.get(1)?,
                until_ms: r.get(2)?,
            })
        },
    )
    .optional()
    .map(|o| o.filter(|o| o.until_ms > now_ms))
}

/// Sets (replaces) the override.
pub fn set(c: &Connection, o: &Override) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO scenario_override (id, scenario, approve_after_ms, until_ms) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET scenario = ?1, approve_after_ms = ?2, until_ms = ?3",
        params![o.scenario.map(i64::from), o.approve_after_ms, o.until_ms],
    )?;
    Ok(())
}

/// Ends the override.
pub fn clear(c: &Connection) -> rusqlite::Result<()> {
    c.execute("DELETE FROM scenario_override", [])?;
    Ok(())
}

/// The scenario and stored digits a new pay takes: the override's when one is in force,
/// else the code's; with a delayed outcome, the approval time to record.
pub fn pick(
    c: &Connection,
    scenario: Scenario,
    digits: &str,
    now_ms: i64,
) -> rusqlite::Result<(Scenario, String, Option<i64>)> {
    Ok(match active(c, now_ms)? {
        Some(Override {
            approve_after_ms: Some(after),
            ..
        }) => (
            Scenario::from_digits(DELAY_ROW),
            DELAY_ROW.to_string(),
            Some(now_ms.saturating_add(after)),
        ),
        Some(Override {
            scenario: Some(n), ..
        }) => (Scenario::from_digits(n), format!("{n:02}"), None),
        _ => (scenario, digits.to_string(), None),
    })
}

/// Records a pay's delayed approval.
pub fn record_delay(c: &Connection, id: &str, approve_at_ms: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO delayed_approvals (payment_request_id, approve_at_ms) VALUES (?1, ?2)",
        params![id, approve_at_ms],
    )?;
    Ok(())
}

/// Before an inquiry: a payment whose delayed approval is due, and still in process, is now
/// paid. Returns whether it changed.
pub fn settle_delay(c: &Connection, row: &mut PaymentRow, now_ms: i64) -> rusqlite::Result<bool> {
    if row.facts.status != Status::Processing {
        return Ok(false);
    }
    let due: Option<i64> = c
        .query_row(
            "SELECT approve_at_ms FROM delayed_approvals WHERE payment_request_id = ?1",
            [&row.payment_request_id],
            |r| r.get(0),
        )
        .optional()?;
    match due {
        Some(at) if now_ms >= at => {
            row.facts.status = Status::Success;
            c.execute(
                "DELETE FROM delayed_approvals WHERE payment_request_id = ?1",
                [&row.payment_request_id],
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The admin request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOverride {
    /// Two digits of the scenario table.
    #[serde(default)]
    pub scenario: Option<String>,
    /// e.g. `"60s"`: approve new pays this long after they arrive.
    #[serde(default)]
    pub approve_after: Option<String>,
    /// e.g. `"30m"` (at most 2 h).
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
}

/// Checks an admin request; `Err` says what to send instead.
pub fn parse(req: &SetOverride, now_ms: i64) -> Result<Override, String> {
    let dur = |what: &str, s: &str| {
        humantime::parse_duration(s)
            .map_err(|e| format!("{what} {s:?} is not a duration such as \"90s\" or \"30m\": {e}"))
    };
    let scenario = match req.scenario.as_deref() {
        None => None,
        Some(s) if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.parse::<u8>().expect("two digits"))
        }
        Some(s) => {
            return Err(format!(
                "scenario {s:?} must be two digits of the table, e.g. \"83\""
            ))
        }
    };
    let approve_after = req
        .approve_after
        .as_deref()
        .map(|s| dur("approve_after", s))
        .transpose()?;
    if scenario.is_some() == approve_after.is_some() {
        return Err("give exactly one of scenario or approve_after".into());
    }
    let span = req
        .for_
        .as_deref()
        .map(|s| dur("for", s))
        .transpose()?
        .unwrap_or(DEFAULT_FOR);
    if span.is_zero() || span > MAX_FOR {
        return Err("for must be more than 0 and at most 2h".into());
    }
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Ok(Override {
        scenario,
        approve_after_ms: approve_after.map(ms),
        until_ms: now_ms.saturating_add(ms(span)),
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"message": message}})),
    )
        .into_response()
}

fn shown(o: Option<Override>) -> Response {
    Json(serde_json::json!({ "override": o })).into_response()
}

/// `GET /sandbox/override`.
pub async fn get(State(app): State<Arc<App>>) -> Response {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.transaction(|c| active(c, now_ms()))).await {
        Ok(Ok(o)) => shown(o),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sandbox database error".into(),
        ),
    }
}

/// `PUT /sandbox/override`.
pub async fn put(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let req: SetOverride = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let o = match parse(&req, now_ms()) {
        Ok(o) => o,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.transaction(|c| set(c, &o))).await {
        Ok(Ok(())) => {
            tracing::info!(?o, "sandbox: scenario override set");
            shown(Some(o))
        }
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sandbox database error".into(),
        ),
    }
}

/// `DELETE /sandbox/override`.
pub async fn delete(State(app): State<Arc<App>>) -> Response {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.transaction(clear)).await {
        Ok(Ok(())) => {
            tracing::info!("sandbox: scenario override ended");
            shown(None)
        }
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sandbox database error".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(scenario: Option<&str>, after: Option<&str>, span: Option<&str>) -> SetOverride {
        SetOverride {
            scenario: scenario.map(str::to_string),
            approve_after: after.map(str::to_string),
            for_: span.map(str::to_string),
        }
    }

    #[test]
    fn requests_are_checked() {
        let o = parse(&req(Some("83"), None, Some("30m")), 1_000).unwrap();
        assert_eq!((o.scenario, o.until_ms), (Some(83), 1_000 + 1_800_000));
        let o = parse(&req(None, Some("60s"), None), 0).unwrap();
        assert_eq!((o.approve_after_ms, o.until_ms), (Some(60_000), 1_800_000));
        for bad in [
            req(Some("8"), None, None),
            req(Some("x3"), None, None),
            req(None, None, None),
            req(Some("83"), Some("5s"), None),
            req(Some("83"), None, Some("3h")),
            req(Some("83"), None, Some("0s")),
            req(None, Some("soon"), None),
        ] {
            assert!(parse(&bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overrides_are_time_boxed_and_delays_settle_once_due() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let code = Scenario::from_digits(12);
        assert_eq!(pick(&c, code, "12", 0).unwrap(), (code, "12".into(), None));
        set(
            &c,
            &Override {
                scenario: Some(80),
                approve_after_ms: None,
                until_ms: 1_000,
            },
        )
        .unwrap();
        assert_eq!(pick(&c, code, "12", 999).unwrap().1, "80");
        assert_eq!(
            pick(&c, code, "12", 1_000).unwrap().1,
            "12",
            "the time box ended"
        );
        set(
            &c,
            &Override {
                scenario: None,
                approve_after_ms: Some(500),
                until_ms: 10_000,
            },
        )
        .unwrap();
        let (s, d, at) = pick(&c, code, "12", 2_000).unwrap();
        assert_eq!(
            (s, d.as_str(), at),
            (Scenario::from_digits(DELAY_ROW), "83", Some(2_500))
        );
        clear(&c).unwrap();
        assert_eq!(active(&c, 0).unwrap(), None);
    }
}
