//! The API client behind the admin nouns: the stored session (0600), automatic refresh of an
//! expired access token, and API errors turned into `error[CODE]: message`.

use std::ops::ControlFlow;
use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::commands::CliError;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: i64,
}

/// `$MOAT_CLI_SESSION`, else `$XDG_CONFIG_HOME/moat/session.json`, else `~/.config/moat/session.json`.
pub fn session_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MOAT_CLI_SESSION") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("moat").join("session.json")
}

pub fn load_session() -> Option<Session> {
    let text = std::fs::read(session_path()).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes the session readable by the owner only.
pub fn save_session(s: &Session) -> Result<(), CliError> {
    let path = session_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::runtime("io_error", format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let bytes = serde_json::to_vec_pretty(s).map_err(|e| CliError::runtime("io_error", e.to_string()))?;
    moat_server::bootstrap::write_secret_file(&tmp, &bytes).map_err(CliError::from)?;
    std::fs::rename(&tmp, &path).map_err(|e| CliError::runtime("io_error", format!("cannot write {}: {e}", path.display())))
}

pub fn clear_session() {
    let _ = std::fs::remove_file(session_path());
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub struct Client {
    http: reqwest::Client,
    pub server: String,
    session: Option<Session>,
    in_tenant: Option<String>,
}

impl Client {
    /// A client of `server` (else the stored session's, else the default), acting in
    /// `in_tenant` (Super Admin), stating `justification` on every request
    /// (`X-Moat-Justification`, recorded in the audit trail).
    pub fn new(server: Option<String>, in_tenant: Option<String>, justification: Option<&str>) -> Result<Self, CliError> {
        if let Some(t) = &in_tenant
            && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(CliError::usage("invalid_slug", format!("tenant {t:?} is not a slug (letters, digits, '-', '_')")));
        }
        let session = load_session();
        let server = server.or_else(|| session.as_ref().map(|s| s.server.clone())).unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(j) = justification.map(str::trim).filter(|j| !j.is_empty()) {
            let v = reqwest::header::HeaderValue::from_bytes(j.as_bytes())
                .map_err(|_| CliError::usage("invalid_justification", "--justification: must be printable text on one line"))?;
            headers.insert("x-moat-justification", v);
        }
        let mut http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(std::time::Duration::from_secs(120))
            .user_agent(concat!("moat-cli/", env!("CARGO_PKG_VERSION")));
        // A private CA (a `moat init --self-signed` certificate) trusted beside the system's.
        if let Some(path) = std::env::var_os("MOAT_CA_CERT").filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path).map_err(|e| {
                CliError::usage("invalid_ca_cert", format!("MOAT_CA_CERT: cannot read {}: {e}", std::path::Path::new(&path).display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CliError::usage("invalid_ca_cert", format!("MOAT_CA_CERT: not a PEM certificate bundle: {e}")))?;
            http = http.tls_certs_merge(certs);
        }
        let http = http.build().map_err(|e| CliError::runtime("client_error", e.to_string()))?;
        Ok(Self { http, server: server.trim_end_matches('/').to_owned(), session, in_tenant })
    }

    fn url(&self, path: &str) -> String {
        let mut u = format!("{}{path}", self.server);
        if let Some(t) = &self.in_tenant {
            u.push(if u.contains('?') { '&' } else { '?' });
            u.push_str("tenant=");
            u.push_str(t);
        }
        u
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let mut err = CliError::runtime("server_unreachable", format!("cannot reach {}: {e}", self.server));
        err.hints.push("is `moat serve` running? pass --server URL to use another".into());
        err
    }

    /// Logs in (with a second-factor code when given) and stores the session; answers the
    /// server's token response (recovery codes when the code confirmed a new factor).
    pub async fn login(&mut self, tenant: Option<&str>, email: &str, password: &str, mfa_code: Option<&str>) -> Result<Value, CliError> {
        let body = serde_json::json!({"tenant": tenant, "email": email, "password": password, "mfa_code": mfa_code});
        let resp = self.http.post(format!("{}/v1/auth/login", self.server)).json(&body).send().await.map_err(|e| self.unreachable(&e))?;
        let refresh = refresh_cookie(&resp);
        let v = ok_json(resp).await?;
        let s = Session {
            server: self.server.clone(),
            access_token: v["access_token"].as_str().unwrap_or_default().to_owned(),
            refresh_token: refresh,
            expires_at: now_s() + v["expires_in"].as_i64().unwrap_or(0),
        };
        save_session(&s)?;
        self.session = Some(s);
        Ok(v)
    }

    /// A request that signs in by its body, not by a session (`POST /v1/auth/mfa/enroll`).
    pub async fn post_unauthenticated(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let resp = self.http.post(format!("{}{path}", self.server)).json(body).send().await.map_err(|e| self.unreachable(&e))?;
        ok_json(resp).await
    }

    async fn refresh(&mut self) -> Result<(), CliError> {
        let Some(s) = self.session.clone() else { return Err(not_logged_in()) };
        let Some(rt) = &s.refresh_token else { return Err(not_logged_in()) };
        let resp = self
            .http
            .post(format!("{}/v1/auth/refresh", self.server))
            .header(reqwest::header::COOKIE, format!("moat_refresh={rt}"))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let refresh = refresh_cookie(&resp);
        let v = match ok_json(resp).await {
            Ok(v) => v,
            Err(mut e) => {
                clear_session();
                e.hints.push("log in again with `moat login`".into());
                return Err(e);
            }
        };
        let s = Session {
            access_token: v["access_token"].as_str().unwrap_or_default().to_owned(),
            refresh_token: refresh.or(s.refresh_token),
            expires_at: now_s() + v["expires_in"].as_i64().unwrap_or(0),
            ..s
        };
        save_session(&s)?;
        self.session = Some(s);
        Ok(())
    }

    /// An authenticated call; refreshes an expired access token first. `Ok(None)` for 204.
    pub async fn call(&mut self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let token = self.bearer().await?;
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        ok_json(resp).await
    }

    /// The credential to send: an API key in MOAT_API_KEY wins over the stored session
    /// (scripts, CI); an expired session is refreshed first.
    async fn bearer(&mut self) -> Result<String, CliError> {
        if let Some(k) = std::env::var("MOAT_API_KEY").ok().filter(|k| !k.is_empty()) {
            return Ok(k);
        }
        let s = self.session.as_ref().ok_or_else(not_logged_in)?;
        if s.expires_at - 30 <= now_s() {
            self.refresh().await?;
        }
        self.session.as_ref().map(|s| s.access_token.clone()).ok_or_else(not_logged_in)
    }

    /// A call whose answer is text (CSV results and reports).
    pub async fn call_text(&mut self, method: Method, path: &str, body: Option<Value>, accept: &str) -> Result<String, CliError> {
        let token = self.bearer().await?;
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token).header(reqwest::header::ACCEPT, accept);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            return resp.text().await.map_err(|e| CliError::runtime("bad_response", e.to_string()));
        }
        ok_json(resp).await.map(|_| String::new())
    }

    /// Streams a GET's body into `out` (written beside it, then renamed: never a partial file
    /// under that name); `on_bytes(total)` as it arrives. Returns the bytes written.
    pub async fn download(&mut self, path: &str, out: &std::path::Path, mut on_bytes: impl FnMut(u64)) -> Result<u64, CliError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let token = self.bearer().await?;
        let resp = self.http.get(self.url(path)).bearer_auth(token).send().await.map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return ok_json(resp).await.map(|_| 0);
        }
        let io = |what: &str, e: std::io::Error| CliError::runtime("io_error", format!("cannot {what} {}: {e}", out.display()));
        let part = out.with_extension("part");
        let mut f = tokio::fs::File::create(&part).await.map_err(|e| io("create", e))?;
        let mut body = resp.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(CliError::runtime("bad_response", format!("the download broke off: {e}")));
                }
            };
            f.write_all(&chunk).await.map_err(|e| io("write", e))?;
            written += chunk.len() as u64;
            on_bytes(written);
        }
        f.sync_all().await.map_err(|e| io("write", e))?;
        tokio::fs::rename(&part, out).await.map_err(|e| io("write", e))?;
        Ok(written)
    }

    /// A request answered with NDJSON lines (`{"progress": …}` … then `{"result": …}` or
    /// `{"error": …}`): each progress object goes to `on_progress`; returns the result.
    pub async fn call_ndjson(&mut self, method: Method, path: &str, mut on_progress: impl FnMut(&Value)) -> Result<Value, CliError> {
        let token = self.bearer().await?;
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return ok_json(resp).await;
        }
        let last = each_line(resp, |v| {
            if let Some(p) = v.get("progress") {
                on_progress(p);
                return ControlFlow::Continue(());
            }
            ControlFlow::Break(match v.get("result") {
                Some(r) => Ok(r.clone()),
                None => Err(CliError::runtime_owned(
                    v["error"]["code"].as_str().unwrap_or("http_error").to_owned(),
                    v["error"]["message"].as_str().unwrap_or("the request failed").to_owned(),
                )),
            })
        })
        .await?;
        last.unwrap_or_else(|| Err(CliError::runtime("bad_response", "the server's answer ended before its result")))
    }

    /// A GET answered with NDJSON lines for as long as the server sends them: each line goes to
    /// `on_line` as it arrives.
    pub async fn stream_lines(&mut self, path: &str, mut on_line: impl FnMut(&Value)) -> Result<(), CliError> {
        let token = self.bearer().await?;
        // No overall deadline: a followed stream is meant to stay open.
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .timeout(std::time::Duration::from_secs(365 * 24 * 3600))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return ok_json(resp).await.map(|_| ());
        }
        each_line(resp, |v| {
            on_line(&v);
            ControlFlow::<()>::Continue(())
        })
        .await?;
        Ok(())
    }

    /// Streams a CSV or Parquet file (told apart by Parquet's `PAR1` magic) as a table upload,
    /// with a progress bar on a terminal.
    pub async fn upload_table(&mut self, path: &str, file: &std::path::Path, progress: bool) -> Result<Value, CliError> {
        use futures::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let token = self.bearer().await?;
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| CliError::usage("file_not_found", format!("cannot open {}: {e}", file.display())))?;
        let mut magic = [0u8; 4];
        let parquet = f.read_exact(&mut magic).await.is_ok() && &magic == b"PAR1";
        f.rewind().await.map_err(|e| CliError::usage("file_not_found", format!("cannot read {}: {e}", file.display())))?;
        let content_type = if parquet { "application/vnd.apache.parquet" } else { "text/csv" };
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let bar =
            crate::output::progress_bar(progress, len, "{spinner} uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}");
        let b2 = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(f).inspect(move |chunk| {
            if let Ok(c) = chunk {
                b2.inc(c.len() as u64);
            }
        });
        let resp = self
            .http
            .put(self.url(path))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        bar.finish_and_clear();
        ok_json(resp).await
    }

    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }
}

/// Feeds each NDJSON line of `resp`'s body to `on_line` as it arrives, until `on_line` breaks
/// (its value is returned) or the body ends (`None`).
async fn each_line<B>(resp: reqwest::Response, mut on_line: impl FnMut(Value) -> ControlFlow<B>) -> Result<Option<B>, CliError> {
    use futures::StreamExt;
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CliError::runtime("bad_response", format!("the answer broke off: {e}")))?;
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let v: Value =
                serde_json::from_slice(&line).map_err(|_| CliError::runtime("bad_response", "the server sent a line that is not JSON"))?;
            if let ControlFlow::Break(b) = on_line(v) {
                return Ok(Some(b));
            }
        }
    }
    Ok(None)
}

fn not_logged_in() -> CliError {
    let mut e = CliError::runtime("not_logged_in", "no stored session");
    e.hints.push("run `moat login --email E [--tenant T]` first, or set MOAT_API_KEY".into());
    e
}

fn refresh_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("moat_refresh=").map(|rest| rest.split(';').next().unwrap_or_default().to_owned()))
        .filter(|v| !v.is_empty())
}

/// The JSON body of a success, or the API's error as a CLI error.
async fn ok_json(resp: reqwest::Response) -> Result<Value, CliError> {
    let status = resp.status();
    let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        if status == StatusCode::NO_CONTENT || text.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(&text).map_err(|_| CliError::runtime("bad_response", "the server answered with invalid JSON"));
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("http_error").to_owned();
    let message = v["error"]["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned);
    let mut e = CliError::runtime_owned(code, message);
    if let Some(r) = retry_after {
        e.hints.push(format!("retry after {r} s"));
    }
    Err(e)
}
