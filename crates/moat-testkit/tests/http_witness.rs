//! Checkpoints cosigned by a transparency-log witness (C2SP tlog-witness / tlog-cosignature
//! v1). The witness here follows the protocol as written — it trusts the log's key, keeps the
//! latest cosigned size and root per origin, answers 409 with its size to a wrong `old`, checks
//! the RFC 6962 consistency proof, refuses a different root at a size it cosigned — so the log
//! is held to one history by a party it does not control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use moat_core::checkpoint::{Checkpoint, Cosigner, NoteVerifier};
use moat_core::tlog;
use moat_testkit::TestServer;

struct Witness {
    cosigner: Cosigner,
    /// The log keys it trusts, by origin.
    logs: Mutex<HashMap<String, NoteVerifier>>,
    /// Latest cosigned (size, root) per origin.
    seen: Mutex<HashMap<String, (u64, tlog::Hash)>>,
    requests: Mutex<Vec<u64>>,
}

fn answer(status: StatusCode, body: String) -> axum::response::Response {
    (status, body).into_response()
}

impl Witness {
    fn add_checkpoint(&self, body: &str) -> axum::response::Response {
        let Some((head, note)) = body.split_once("\n\n") else { return answer(StatusCode::BAD_REQUEST, "no blank line".into()) };
        let mut lines = head.lines();
        let Some(old) = lines.next().and_then(|l| l.strip_prefix("old ")).and_then(|n| n.parse::<u64>().ok()) else {
            return answer(StatusCode::BAD_REQUEST, "no old size".into());
        };
        let proof: Vec<Vec<u8>> = lines.map(|l| STANDARD.decode(l).unwrap()).collect();
        let origin = note.lines().next().unwrap_or("").to_owned();
        let Some(log) = self.logs.lock().unwrap().get(&origin).cloned() else { return answer(StatusCode::NOT_FOUND, "unknown log".into()) };
        let Ok(text) = log.open(note) else { return answer(StatusCode::FORBIDDEN, "bad signature".into()) };
        let cp = Checkpoint::parse_body(text).unwrap();
        self.requests.lock().unwrap().push(old);
        if old > cp.size {
            return answer(StatusCode::BAD_REQUEST, "old > size".into());
        }
        let mut seen = self.seen.lock().unwrap();
        let (have, root) = seen.get(&origin).copied().unwrap_or((0, tlog::empty_root()));
        if old != have {
            return ([(header::CONTENT_TYPE, "text/x.tlog.size")], (StatusCode::CONFLICT, format!("{have}\n"))).into_response();
        }
        if old == cp.size && root != cp.root {
            return answer(StatusCode::CONFLICT, "different root at the same size".into());
        }
        if old > 0 && old < cp.size && tlog::verify_consistency(old, cp.size, &proof, &root, &cp.root).is_err() {
            return answer(StatusCode::UNPROCESSABLE_ENTITY, "inconsistent".into());
        }
        seen.insert(origin, (cp.size, cp.root));
        answer(StatusCode::OK, self.cosigner.cosign(text, 1_700_000_000))
    }
}

async fn start_witness(w: Arc<Witness>) -> String {
    let app = axum::Router::new().route(
        "/w/add-checkpoint",
        axum::routing::post(move |body: String| {
            let w = w.clone();
            async move { w.add_checkpoint(&body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/w", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The published checkpoint of the token's trail once it carries the witness's cosignature.
async fn cosigned(s: &TestServer, token: &str, w: &Witness) -> (String, String) {
    for _ in 0..100 {
        let cp = s.checkpointed(token).await;
        let trail = cp["trail"].as_str().unwrap().to_owned();
        let path = s.dir.path().join("data/checkpoints").join(&trail).join("checkpoint");
        if let Ok(note) = std::fs::read_to_string(&path) {
            let body = NoteVerifier::parse(cp["verifier_key"].as_str().unwrap()).unwrap().open(&note).unwrap().to_owned();
            if note.contains(&format!("\u{2014} {} ", w.cosigner.verifier().name()))
                && Checkpoint::parse_body(&body).unwrap().size == cp["size"].as_u64().unwrap()
            {
                return (note, body);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no cosigned checkpoint within 10 s");
}

#[tokio::test]
async fn every_checkpoint_is_cosigned_by_the_witness_with_a_consistency_proof() {
    let w = Arc::new(Witness {
        cosigner: Cosigner::from_seed("witness.test/w1", &[11; 32]).unwrap(),
        logs: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashMap::new()),
        requests: Mutex::new(Vec::new()),
    });
    let url = start_witness(w.clone()).await;
    let key = w.cosigner.verifier().encode();
    // The witness trusts the logs' keys once it is told them (until then it answers 404 and
    // the checkpointer tries again after the next commit).
    let s = TestServer::start_with(|c| {
        c.audit.witness_url = url.clone();
        c.audit.witness_key = key.clone();
    })
    .await;
    let platform = s.state.checkpoint_key.verifier("platform").unwrap();
    w.logs.lock().unwrap().insert(platform.name().to_owned(), platform);
    let admin = s.tenant_with_admin("acme").await;
    let trail = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap().id.to_string();
    let v = s.state.checkpoint_key.verifier(&trail).unwrap();
    w.logs.lock().unwrap().insert(v.name().to_owned(), v.clone());

    let (note, body) = cosigned(&s, &admin, &w).await;
    let first = Checkpoint::parse_body(&body).unwrap().size;
    // The published note: the log's signature and the witness's cosignature, both verifying.
    assert_eq!(v.open(&note).unwrap(), body);
    let sigs = &note[note.rfind("\n\n").unwrap() + 2..];
    assert_eq!(w.cosigner.verifier().find(sigs, &body).unwrap().1, 1_700_000_000);

    // More records: the next checkpoint goes with a consistency proof from the cosigned size.
    for i in 0..3 {
        s.user(&admin, "acme", &format!("u{i}@acme.example"), "viewer").await;
    }
    let (_, body) = cosigned(&s, &admin, &w).await;
    assert!(Checkpoint::parse_body(&body).unwrap().size > first);
    assert!(w.requests.lock().unwrap().iter().any(|old| *old >= first), "later submissions say old = the cosigned size");
    // The trail verifies against the cosigned published checkpoint.
    let r = s.get("/v1/audit/verify", &admin).await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);

    // A fresh sink (a restarted server) starts from old 0, learns the witness's size from the
    // 409 and proves consistency from there.
    let sink = moat_server::witness::WitnessSink::new(
        &url,
        w.cosigner.verifier(),
        s.state.stores.audit.clone(),
        s.state.checkpoint_key.clone(),
        None,
    )
    .unwrap();
    use moat_store::audit_log::CheckpointSink;
    s.user(&admin, "acme", "late@acme.example", "viewer").await;
    let latest = s.state.stores.audit.latest_checkpoint(&trail).await.unwrap().unwrap();
    let before = w.requests.lock().unwrap().len();
    sink.publish(&latest).await.unwrap();
    let reqs = w.requests.lock().unwrap()[before..].to_vec();
    assert!(reqs.contains(&0), "{reqs:?}");

    // A split view: a checkpoint of a size the witness cosigned, over another history, signed
    // with the log's own key (an insider with the signing key) — the witness refuses it.
    let (have, _) = w.seen.lock().unwrap()[v.name()];
    let forged_body = Checkpoint { origin: v.name().to_owned(), size: have, root: [7; 32], extensions: vec![] }.body();
    let seed = moat_server::bootstrap::checkpoint_seed(&moat_server::config::DataDir::new(s.dir.path().join("data"))).unwrap();
    let signer = moat_core::checkpoint::NoteSigner::from_seed(v.name(), &seed).unwrap();
    let forged = moat_store::CheckpointRecord { trail: trail.clone(), size: have, ts_ms: 0, note: signer.sign(&forged_body).unwrap() };
    let e = sink.publish(&forged).await.unwrap_err();
    assert_eq!(e.code, "witness_refused", "{e:?}");
}
