//! Rendering API responses as text tables or JSON. Pure: data in, a `String` out.

use super::Format;
use fleetward_proto::api::{self, SessionState, Severity};
use serde_json::{json, Value};
use std::fmt::Write;

/// RFC 3339 UTC to the second, e.g. `2026-11-03T12:00:00Z`.
pub(crate) fn rfc3339(unix_ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)) {
        Ok(t) => {
            let (date, time) = (t.date(), t.time());
            let (y, m, d) = (date.year(), u8::from(date.month()), date.day());
            let (h, min, s) = (time.hour(), time.minute(), time.second());
            format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
        }
        Err(_) => format!("@{unix_ms}ms"),
    }
}

/// How a text view is drawn: with command ids or not, at which time, how wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    /// Show command ids (idempotency keys).
    pub verbose: bool,
    /// "Now", for elapsed and remaining times.
    pub now_ms: i64,
    /// Columns to fit; `None`: no limit (piped).
    pub width: Option<usize>,
}

impl View {
    /// Now, at the terminal's width.
    pub(crate) fn here(verbose: bool) -> View {
        View {
            verbose,
            now_ms: now_ms(),
            width: terminal_width(),
        }
    }

    /// `line` wrapped to the width, continuation lines indented by two spaces.
    pub(crate) fn wrap_line(&self, line: &str) -> String {
        match self.width {
            Some(w) if line.chars().count() > w => {
                let mut parts = wrap(line, w).into_iter();
                let first = parts.next().unwrap_or_default();
                let rest: Vec<String> = wrap(
                    &parts.collect::<Vec<_>>().join(" "),
                    w.saturating_sub(2).max(20),
                )
                .into_iter()
                .filter(|l| !l.is_empty())
                .map(|l| format!("  {l}"))
                .collect();
                std::iter::once(first)
                    .chain(rest)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            _ => line.to_owned(),
        }
    }
}

/// The wall clock in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Columns for text output: `COLUMNS` if set, else the terminal's width when stdout is one,
/// else `None` (piped: nothing is cut or wrapped).
pub(crate) fn terminal_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return Some(n);
    }
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// Splits `s` into lines of at most `width` characters, at spaces where it can.
pub(crate) fn wrap(s: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        let len = line.chars().count();
        if len > 0 && len + 1 + word.len() <= width {
            line.push(' ');
            line.extend(word.iter());
            continue;
        }
        if len > 0 && word.len() > width && len + 2 < width {
            // A word longer than a line (a path) starts on this one.
            let rest = word.split_off(width - len - 1);
            line.push(' ');
            line.extend(word.iter());
            word = rest;
        }
        if len > 0 {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            let rest = word.split_off(width);
            lines.push(word.into_iter().collect());
            word = rest;
        }
        line = word.into_iter().collect();
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// [`table`] made to fit `width` columns by wrapping column `flex` (a message) onto
/// continuation lines; the other columns, the location among them, stay whole. Without a
/// width, or when the table fits, it is the plain table.
pub(crate) fn fit_table(
    header: &[&str],
    rows: &[Vec<String>],
    width: Option<usize>,
    flex: usize,
) -> String {
    let Some(width) = width else {
        return table(header, rows);
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let widest = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain(header.get(i).map(|h| h.chars().count()))
            .max()
            .unwrap_or(0)
    };
    let others: usize = (0..header.len())
        .filter(|&i| i != flex)
        .map(|i| widest(i) + 2)
        .sum();
    if others + widest(flex) <= width {
        return table(header, &rows);
    }
    if others + 20 > width {
        // Too narrow for a table with a readable column `flex`: one line per row.
        return narrow_rows(&rows, flex, width);
    }
    // At least 20 columns for the message, even when that overflows a very narrow terminal.
    let room = width.saturating_sub(others).max(20);
    let mut wrapped = Vec::new();
    for row in &rows {
        let parts = row.get(flex).map(|m| wrap(m, room)).unwrap_or_default();
        for (i, part) in parts.iter().enumerate() {
            let mut line: Vec<String> = if i == 0 {
                row.clone()
            } else {
                vec![String::new(); row.len()]
            };
            if let Some(cell) = line.get_mut(flex) {
                *cell = format!("{part:<room$}");
            }
            wrapped.push(line);
        }
    }
    table(header, &wrapped)
}

fn time_or(unix_ms: Option<i64>, none: &str) -> String {
    unix_ms.map_or_else(|| none.to_owned(), rfc3339)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-" } else { s }.to_owned()
}

/// Control characters (from node-supplied strings) must not reach the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The stable machine name of a protobuf enum value: its name without the enum's prefix,
/// in kebab case (`ROLLOUT_PHASE_MAINTENANCE_ON` → `maintenance-on`).
pub(crate) fn enum_name(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

pub(crate) fn json_string(v: &Value) -> String {
    // Serialising a `Value` cannot fail.
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// A list: a JSON array, or a text table (`empty` when it has no rows).
fn list<T>(
    items: &[T],
    fmt: Format,
    json: impl Fn(&T) -> Value,
    (header, row, empty): (&[&str], impl Fn(&T) -> Vec<String>, &str),
) -> String {
    match fmt {
        Format::Json => json_string(&Value::Array(items.iter().map(json).collect())),
        Format::Text if items.is_empty() => format!("{empty}\n"),
        Format::Text => table(header, &items.iter().map(row).collect::<Vec<_>>()),
    }
}

/// A one-line result in text, `value` in JSON.
pub(crate) fn done(text: String, value: Value, fmt: Format) -> String {
    match fmt {
        Format::Json => json_string(&value),
        Format::Text => text + "\n",
    }
}

fn state_text(n: &api::Node) -> String {
    let state = match n.session_state() {
        SessionState::Online => "online",
        SessionState::Offline => "offline",
        SessionState::Unspecified => "unknown",
    };
    let observe = if n.observe_only { ",observe-only" } else { "" };
    state.to_owned() + if n.revoked { ",revoked" } else { "" } + observe
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
        Severity::Unspecified => "unspecified",
    }
}

fn finding_json(f: &api::Finding, with_node: bool) -> Value {
    let sev = severity_name(f.severity());
    let mut v = json!({"code": f.code, "severity": sev, "message": f.message});
    if with_node {
        v["node"] = json!(f.node);
    }
    if let Some(p) = &f.path {
        v["path"] = json!(p);
    }
    if let Some(l) = f.line {
        v["line"] = json!(l);
    }
    v
}

/// `[node, severity, code, message, path:line]`.
fn finding_row(f: &api::Finding) -> Vec<String> {
    let location = match (&f.path, f.line) {
        (Some(p), Some(l)) => format!("{p}:{l}"),
        (Some(p), None) => p.clone(),
        (None, _) => "-".into(),
    };
    let sev = severity_name(f.severity()).to_owned();
    vec![
        f.node.clone(),
        sev,
        f.code.clone(),
        f.message.clone(),
        location,
    ]
}

/// The node with the findings in `findings` that are its own.
fn node_json(n: &api::Node, findings: &[api::Finding]) -> Value {
    let c = n.finding_counts.unwrap_or_default();
    let own = findings.iter().filter(|f| f.node == n.name);
    json!({
        "name": n.name,
        "state": if n.session_state() == SessionState::Online { "online" } else { "offline" },
        "last_seen_unix_ms": n.last_seen_unix_ms,
        "agent_version": n.agent_version,
        "revoked": n.revoked,
        "observe_only": n.observe_only,
        "cert_serial": n.cert_serial,
        "cert_not_after_unix_ms": n.cert_not_after_unix_ms,
        "finding_counts": {"info": c.info, "warning": c.warning, "error": c.error},
        "findings": own.map(|f| finding_json(f, false)).collect::<Vec<_>>(),
    })
}

/// `nodes`, sorted by name; each node gets its own `findings`.
pub(crate) fn nodes(nodes: &[api::Node], findings: &[api::Finding], fmt: Format) -> String {
    let mut nodes = nodes.to_vec();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let header = ["NAME", "STATE", "LAST-SEEN", "ERR", "WARN", "INFO", "AGENT"];
    let row = |n: &api::Node| {
        let c = n.finding_counts.unwrap_or_default();
        let (last_seen, agent) = (
            time_or(n.last_seen_unix_ms, "never"),
            or_dash(&n.agent_version),
        );
        let counts = [c.error, c.warning, c.info].map(|n| n.to_string());
        [
            vec![n.name.clone(), state_text(n), last_seen],
            counts.to_vec(),
            vec![agent],
        ]
        .concat()
    };
    let empty = "no nodes enrolled yet (make a token with `fleetward token create`)";
    list(
        &nodes,
        fmt,
        |n| node_json(n, findings),
        (&header, row, empty),
    )
}

/// `node show`: the node, its findings, and (JSON only) the whole latest report.
pub(crate) fn node_detail(resp: &api::GetNodeResponse, fmt: Format) -> serde_json::Result<String> {
    node_detail_fit(resp, fmt, terminal_width())
}

/// [`node_detail`] with the findings' messages wrapped to `width` columns.
pub(crate) fn node_detail_fit(
    resp: &api::GetNodeResponse,
    fmt: Format,
    width: Option<usize>,
) -> serde_json::Result<String> {
    let node = resp.node.clone().unwrap_or_default();
    let (report, findings) = match &resp.report_json {
        Some(bytes) => {
            let value: Value = serde_json::from_slice(bytes)?;
            let report: fleetward_proto::Report = serde_json::from_value(value.clone())?;
            let to_api = |f| api::Finding::from_report(&node.name, f);
            (value, report.findings.iter().map(to_api).collect())
        }
        None => (Value::Null, Vec::new()),
    };
    if fmt == Format::Json {
        let (node, received) = (node_json(&node, &findings), resp.report_received_unix_ms);
        let v = json!({"node": node, "report": report, "report_received_unix_ms": received});
        return Ok(json_string(&v));
    }
    let c = node.finding_counts.unwrap_or_default();
    let expires = time_or(node.cert_not_after_unix_ms, "?");
    let report_line = match resp.report_received_unix_ms {
        Some(t) => format!(
            "received {} ({} error, {} warning, {} info)",
            rfc3339(t),
            c.error,
            c.warning,
            c.info
        ),
        None => "none yet".into(),
    };
    let fields = [
        ("node", node.name.clone()),
        ("state", state_text(&node)),
        ("last seen", time_or(node.last_seen_unix_ms, "never")),
        ("agent", or_dash(&node.agent_version)),
        (
            "certificate",
            format!("serial {}, expires {expires}", node.cert_serial),
        ),
        ("report", report_line),
    ];
    let mut out = String::new();
    for (k, v) in fields {
        let _ = writeln!(out, "{:<13}{}", format!("{k}:"), clean(&v));
    }
    if !findings.is_empty() {
        let rows: Vec<Vec<String>> = findings
            .iter()
            .map(|f| finding_row(f)[1..].to_vec())
            .collect();
        let header = ["SEVERITY", "CODE", "MESSAGE", "PATH:LINE"];
        out = out + "\n" + &fit_table(&header, &rows, width, 2);
    }
    Ok(out)
}

/// `findings`: the MESSAGE column wrapped to fit `width` (the location stays visible).
pub(crate) fn findings_fit(findings: &[api::Finding], fmt: Format, width: Option<usize>) -> String {
    let header = ["NODE", "SEVERITY", "CODE", "MESSAGE", "PATH:LINE"];
    if fmt == Format::Text && !findings.is_empty() {
        let rows: Vec<Vec<String>> = findings.iter().map(finding_row).collect();
        let others = [0, 1, 2, 4]
            .iter()
            .map(|&i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
                    + 2
            })
            .sum::<usize>();
        return match width {
            // Too narrow for a table with a readable message: one line per finding with
            // its location, the message wrapped below it.
            Some(w) if others + 20 > w => findings_narrow(&rows, w),
            _ => fit_table(&header, &rows, width, 3),
        };
    }
    list(
        findings,
        fmt,
        |f| finding_json(f, true),
        (&header, finding_row, "no findings"),
    )
}

/// Findings on a narrow terminal: "NODE SEVERITY CODE PATH:LINE", then the message
/// indented and wrapped.
fn findings_narrow(rows: &[Vec<String>], width: usize) -> String {
    narrow_rows(rows, 3, width)
}

/// A table on a narrow terminal: each row's cells but column `flex` on one line, then
/// `flex` (a message) indented and wrapped below it (nothing when it is empty).
fn narrow_rows(rows: &[Vec<String>], flex: usize, width: usize) -> String {
    let mut out = String::new();
    for r in rows {
        let r: Vec<String> = r.iter().map(|c| clean(c)).collect();
        let head: Vec<&str> = (0..r.len())
            .filter(|&i| i != flex)
            .map(|i| r[i].as_str())
            .collect();
        let _ = writeln!(out, "{}", head.join("  ").trim_end());
        let message = r.get(flex).map(|m| m.trim()).unwrap_or_default();
        if message.is_empty() {
            continue;
        }
        for line in wrap(message, width.saturating_sub(4).max(20)) {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// `drift`: the findings, and in text whether a policy is loaded (without one, only the
/// nodes are compared with each other). JSON stays the plain list of findings.
pub(crate) fn drift(
    findings: &[api::Finding],
    policy_loaded: bool,
    fmt: Format,
    width: Option<usize>,
) -> String {
    if fmt == Format::Json {
        return findings_fit(findings, fmt, width);
    }
    let policy = if policy_loaded {
        "policy: loaded; nodes are compared with it and with each other"
    } else {
        "policy: none configured; nodes are compared with each other only\n\
         (`fleetward policy capture --from NODE` makes a starting point)"
    };
    let body = if findings.is_empty() {
        "no drift\n".to_string()
    } else {
        findings_fit(findings, fmt, width)
    };
    format!("{policy}\n{body}")
}

pub(crate) fn token_created(t: &api::CreateTokenResponse, controller: &str, fmt: Format) -> String {
    let (token, hex) = (&t.token, &t.ca_sha256);
    // The token travels in the environment, not in argv: an argument is visible to every
    // user of the node in `ps` (the agent also takes `--token-file`).
    let command = format!(
        "FLEETWARD_TOKEN={token} fleetward-agent enroll --controller {controller} --ca-sha256 {hex}"
    );
    let expires = rfc3339(t.expires_at_unix_ms);
    // In text, one argument pair a line with shell continuations: the command stays
    // copy-pastable and fits a terminal (the token and the CA fingerprint are 64
    // characters each, so the token goes through a shell variable first).
    let text = format!(
        "token:    {token}\nid:       {}\nexpires:  {expires}\n\n\
         On the node, run (the token goes through the environment, never argv):\n  \
         token={token}\n  \
         FLEETWARD_TOKEN=$token fleetward-agent enroll \\\n    --controller {controller} \\\n    \
         --ca-sha256 {hex}",
        t.id
    );
    let v = json!({"id": t.id, "token": token, "expires_at_unix_ms": t.expires_at_unix_ms,
                   "ca_sha256": hex, "enroll_command": command});
    done(text, v, fmt)
}

/// `operator list`: name, scope, expiry, state (valid, expired, revoked), serial.
pub(crate) fn operators(ops: &[api::OperatorInfo], now_ms: i64, fmt: Format) -> String {
    let state = |o: &api::OperatorInfo| {
        if o.revoked {
            "revoked"
        } else if o.not_after_unix_ms > 0 && o.not_after_unix_ms <= now_ms {
            "expired"
        } else {
            "valid"
        }
    };
    let json = |o: &api::OperatorInfo| {
        json!({"name": o.name, "scope": o.scope, "serial": o.serial,
               "not_after_unix_ms": o.not_after_unix_ms, "issued_unix_ms": o.issued_unix_ms,
               "revoked": o.revoked, "state": state(o)})
    };
    let row = |o: &api::OperatorInfo| {
        let expires = match o.not_after_unix_ms {
            0 => "unknown".to_string(),
            t => rfc3339(t),
        };
        vec![
            o.name.clone(),
            o.scope.clone(),
            expires,
            state(o).into(),
            o.serial.clone(),
        ]
    };
    list(
        ops,
        fmt,
        json,
        (
            &["NAME", "SCOPE", "EXPIRES", "STATE", "SERIAL"],
            row,
            "no operators registered",
        ),
    )
}

/// `token list`; a token past its expiry at `now_ms` shows as expired.
pub(crate) fn tokens(tokens: &[api::TokenInfo], now_ms: i64, fmt: Format) -> String {
    let expired = |t: &api::TokenInfo| !t.used && t.expires_at_unix_ms <= now_ms;
    let json = |t: &api::TokenInfo| json!({"id": t.id, "node": t.node_name, "expires_at_unix_ms": t.expires_at_unix_ms, "used": t.used, "revoked": t.revoked, "expired": expired(t)});
    let row = |t: &api::TokenInfo| {
        let node = t.node_name.clone().unwrap_or_else(|| "(any)".into());
        let used = match (t.used, t.revoked, expired(t)) {
            (true, _, _) => "yes",
            (false, true, _) => "revoked",
            (false, false, true) => "expired",
            (false, false, false) => "no",
        };
        vec![
            t.id.clone(),
            node,
            rfc3339(t.expires_at_unix_ms),
            used.into(),
        ]
    };
    list(
        tokens,
        fmt,
        json,
        (&["ID", "NODE", "EXPIRES", "USED"], row, "no tokens"),
    )
}

pub(crate) fn audit(entries: &[api::AuditEntry], fmt: Format) -> String {
    audit_fit(entries, fmt, terminal_width())
}

/// [`audit`] with the DETAIL column wrapped to `width` columns.
pub(crate) fn audit_fit(entries: &[api::AuditEntry], fmt: Format, width: Option<usize>) -> String {
    let json = |e: &api::AuditEntry| {
        json!({"time_unix_ms": e.time_unix_ms, "actor": e.actor, "action": e.action,
               "target": e.target, "detail": e.detail})
    };
    let row = |e: &api::AuditEntry| {
        let rest = [&e.actor, &e.action, &e.target, &e.detail].map(|s| s.clone());
        [vec![rfc3339(e.time_unix_ms)], rest.to_vec()].concat()
    };
    let header = ["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"];
    if fmt == Format::Text && !entries.is_empty() {
        // The detail (a reason, a node list) wraps to the terminal.
        let rows: Vec<Vec<String>> = entries.iter().map(row).collect();
        return fit_table(&header, &rows, width, 4);
    }
    list(entries, fmt, json, (&header, row, "no audit entries"))
}

/// `node diff A B`: KEY | A | B, differences first (the controller sorts).
pub(crate) fn diff(a: &str, b: &str, rows: &[api::DiffRow], fmt: Format) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let json = |r: &api::DiffRow| json!({"key": r.key, "a": r.a, "b": r.b, "differs": r.differs});
    let row = |r: &api::DiffRow| {
        let mark = if r.differs { "*" } else { "" };
        vec![mark.into(), r.key.clone(), or_dash(&r.a), or_dash(&r.b)]
    };
    list(rows, fmt, json, (&["", "FACT", a, b], row, "no facts"))
}

/// `node history NAME`: TIME | FACT | OLD | NEW.
pub(crate) fn history(changes: &[api::FactChange], fmt: Format) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let json = |c: &api::FactChange| json!({"time_unix_ms": c.time_unix_ms, "key": c.key, "old": c.old, "new": c.new});
    let row = |c: &api::FactChange| {
        vec![
            rfc3339(c.time_unix_ms),
            c.key.clone(),
            or_dash(&c.old),
            or_dash(&c.new),
        ]
    };
    list(
        changes,
        fmt,
        json,
        (&["TIME", "FACT", "OLD", "NEW"], row, "no changes recorded"),
    )
}

/// A policy as TOML (text) or `{path, toml}` (JSON).
pub(crate) fn policy(p: &api::PolicyText, fmt: Format) -> String {
    let text = if p.toml.is_empty() {
        "no policy configured".to_string()
    } else {
        p.toml.trim_end().to_string()
    };
    done(text, json!({"path": p.path, "toml": p.toml}), fmt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(node: &str, sev: Severity, path: Option<&str>, line: Option<u32>) -> api::Finding {
        api::Finding {
            node: node.into(),
            code: "FW-BOOT-001".into(),
            severity: sev.into(),
            message: "boot \x1b[31mbroken".into(),
            path: path.map(Into::into),
            line,
        }
    }

    fn node(name: &str, online: bool) -> api::Node {
        api::Node {
            name: name.into(),
            last_seen_unix_ms: online.then_some(1_700_000_000_123),
            session_state: if online {
                SessionState::Online
            } else {
                SessionState::Offline
            }
            .into(),
            finding_counts: Some(api::FindingCounts {
                info: 0,
                warning: 2,
                error: 1,
            }),
            cert_serial: "4abc".into(),
            cert_not_after_unix_ms: Some(1_800_000_000_000),
            revoked: !online,
            agent_version: if online {
                "0.1.0".into()
            } else {
                String::new()
            },
            observe_only: false,
        }
    }

    #[test]
    fn enum_names_are_kebab_case_without_the_prefix() {
        let name = api::SessionState::Online.as_str_name();
        assert_eq!(enum_name(name, "SESSION_STATE_"), "online");
        assert_eq!(
            enum_name("ROLLOUT_PHASE_AWAIT_RETURN", "ROLLOUT_PHASE_"),
            "await-return"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MAX), format!("@{}ms", i64::MAX));
    }

    #[test]
    fn table_pads_to_the_widest_cell_and_strips_control_characters() {
        let rows = vec![
            vec!["pve-long-name".into(), "x".into(), "".into()],
            vec!["a".into(), "ü\tb".into(), "z".into()],
        ];
        let t = table(&["NAME", "S", "LAST"], &rows);
        let expected = "NAME           S    LAST\npve-long-name  x\na              ü b  z\n";
        assert_eq!(t, expected);
        assert!(table(&["A"], &[]).eq("A\n"));
    }

    #[test]
    fn nodes_text_and_json() {
        let ns = [node("pve2", false), node("pve1", true)];
        let fs = [
            finding("pve1", Severity::Error, Some("/etc/fstab"), Some(3)),
            finding("pve2", Severity::Info, None, None),
        ];
        let text = nodes(&ns, &fs, Format::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  STATE            LAST-SEEN             ERR  WARN  INFO  AGENT"
        );
        assert_eq!(
            lines[1],
            "pve1  online           2023-11-14T22:13:20Z  1    2     0     0.1.0"
        );
        assert_eq!(
            lines[2],
            "pve2  offline,revoked  never                 1    2     0     -"
        );

        let v: Value = serde_json::from_str(&nodes(&ns, &fs, Format::Json)).unwrap();
        assert_eq!(v[0]["name"], "pve1");
        assert_eq!(v[0]["state"], "online");
        assert_eq!(v[0]["last_seen_unix_ms"], 1_700_000_000_123i64);
        assert_eq!(
            v[0]["finding_counts"],
            json!({"info": 0, "warning": 2, "error": 1})
        );
        assert_eq!(
            v[0]["findings"],
            json!([{"code": "FW-BOOT-001", "severity": "error", "message": "boot \x1b[31mbroken", "path": "/etc/fstab", "line": 3}])
        );
        assert_eq!(v[1]["state"], "offline");
        assert_eq!(v[1]["revoked"], true);
        assert_eq!(v[1]["last_seen_unix_ms"], Value::Null);
        assert_eq!(
            v[1]["findings"][0],
            json!({"code": "FW-BOOT-001", "severity": "info", "message": "boot \x1b[31mbroken"})
        );
    }

    #[test]
    fn node_detail_carries_the_report() {
        let report = fleetward_proto::Report {
            schema_version: fleetward_proto::SCHEMA_VERSION,
            facts: Default::default(),
            findings: vec![fleetward_proto::Finding {
                code: "FW-DNS-002".into(),
                severity: fleetward_proto::Severity::Warning,
                message: "resolver".into(),
                path: Some("/etc/resolv.conf".into()),
                line: None,
            }],
        };
        let resp = api::GetNodeResponse {
            node: Some(node("pve1", true)),
            report_json: Some(fleetward_proto::report_json_bytes(&report)),
            report_received_unix_ms: Some(1_700_000_000_000),
        };
        let v: Value = serde_json::from_str(&node_detail(&resp, Format::Json).unwrap()).unwrap();
        assert_eq!(v["node"]["name"], "pve1");
        assert_eq!(v["node"]["findings"][0]["path"], "/etc/resolv.conf");
        assert_eq!(
            v["report"]["schema_version"],
            json!(fleetward_proto::SCHEMA_VERSION)
        );
        assert_eq!(v["report_received_unix_ms"], 1_700_000_000_000i64);
        let text = node_detail(&resp, Format::Text).unwrap();
        assert!(
            text.contains("report:      received 2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(
            text.contains("warning   FW-DNS-002  resolver  /etc/resolv.conf"),
            "{text}"
        );

        let empty = api::GetNodeResponse {
            node: Some(node("pve9", false)),
            ..Default::default()
        };
        let v: Value = serde_json::from_str(&node_detail(&empty, Format::Json).unwrap()).unwrap();
        assert_eq!(
            (&v["report"], &v["node"]["findings"]),
            (&Value::Null, &json!([]))
        );
        assert!(node_detail(&empty, Format::Text)
            .unwrap()
            .contains("report:      none yet"));
    }

    #[test]
    fn findings_tokens_audit() {
        let fs = [finding(
            "pve1",
            Severity::Warning,
            Some("/etc/fstab"),
            Some(3),
        )];
        let text = findings_fit(&fs, Format::Text, None);
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "pve1  warning   FW-BOOT-001  boot  [31mbroken  /etc/fstab:3"
        );
        let v: Value = serde_json::from_str(&findings_fit(&fs, Format::Json, None)).unwrap();
        assert_eq!(v[0]["node"], "pve1");

        let ts = [api::TokenInfo {
            id: "t1".into(),
            node_name: None,
            expires_at_unix_ms: 0,
            used: true,
            revoked: false,
        }];
        assert_eq!(
            tokens(&ts, 0, Format::Text),
            "ID  NODE   EXPIRES               USED\nt1  (any)  1970-01-01T00:00:00Z  yes\n"
        );
        let v: Value = serde_json::from_str(&tokens(&ts, 0, Format::Json)).unwrap();
        assert_eq!(
            v,
            json!([{"id": "t1", "node": null, "expires_at_unix_ms": 0, "used": true, "revoked": false, "expired": false}])
        );
        let unused = [api::TokenInfo {
            used: false,
            ..ts[0].clone()
        }];
        assert!(tokens(&unused, 1, Format::Text).contains("expired"));
        assert!(tokens(&unused, -1, Format::Text).ends_with("  no\n"));

        let es = [api::AuditEntry {
            time_unix_ms: 0,
            actor: "admin".into(),
            action: "token.create".into(),
            target: "t1".into(),
            detail: String::new(),
        }];
        assert_eq!(
            audit(&es, Format::Text).lines().nth(1).unwrap(),
            "1970-01-01T00:00:00Z  admin  token.create  t1"
        );
        let v: Value = serde_json::from_str(&audit(&es, Format::Json)).unwrap();
        assert_eq!(v[0]["action"], "token.create");
    }

    #[test]
    fn token_created_prints_the_enroll_command() {
        let t = api::CreateTokenResponse {
            id: "t1".into(),
            token: "SECRET".into(),
            expires_at_unix_ms: 0,
            ca_sha256: "ab12".into(),
        };
        let v: Value =
            serde_json::from_str(&token_created(&t, "https://ctl:7443", Format::Json)).unwrap();
        let cmd =
            "FLEETWARD_TOKEN=SECRET fleetward-agent enroll --controller https://ctl:7443 --ca-sha256 ab12";
        assert_eq!(
            v,
            json!({"id": "t1", "token": "SECRET", "expires_at_unix_ms": 0, "ca_sha256": "ab12", "enroll_command": cmd})
        );
        let text = token_created(&t, "https://ctl:7443", Format::Text);
        let joined = text.replace(" \\\n    ", " ").replace(
            "\n  token=SECRET\n  FLEETWARD_TOKEN=$token ",
            "\n  FLEETWARD_TOKEN=SECRET ",
        );
        assert!(joined.trim_end().ends_with(&format!("\n  {cmd}")), "{text}");
        assert!(!text.contains("--token"), "{text}");
    }
}
