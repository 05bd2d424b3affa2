//! Fault injection between the agent and a real S3 server (`moto_server` on 127.0.0.1): a
//! TCP proxy in front of it that, on command, refuses connections (the store is down), answers
//! 500 or 503 SlowDown, cuts response bodies short, resets connections mid-body, or trickles
//! bytes. New model versions are uploaded along the way (the pinned sha256 rolled forward as
//! a GitOps change would). After every injected fault the shared directory must hold either
//! nothing or a complete, verified version — never a corrupt or partial one — and `ready`
//! must never be true without it; once the fault clears, the latest version is published.
//!
//! `make test` injects 12 faults; `make reliability` sets `KILN_RELIABILITY_FAULTS=100`.

mod common;

use std::sync::atomic::Ordering;

use common::proxy::{Fault, Proxy, FAULTS};
use common::{agent, consistent, content, rt, Moto};
use kiln::Digest;
use object_store::{ObjectStoreExt, PutPayload};

#[test]
fn injected_store_faults_never_publish_anything_corrupt() {
    let moto = Moto::start()
        .expect("moto_server is required (on the machine image, or pip install 'moto[server]')");
    let faults: usize = std::env::var("KILN_RELIABILITY_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let rt = rt();
    let proxy = rt.block_on(Proxy::start(moto.port));
    let store = moto.store("models", "test");
    moto.create_bucket("models");
    let root = tempfile::tempdir().expect("root");
    let mut uploaded = Vec::new();
    let (mut published, mut failed_syncs, mut ok_under_fault, mut not_ready_under_fault) =
        (0, 0, 0, 0);
    let mut version = 0u8;
    for i in 0..faults {
        if i % 4 == 0 {
            // A new version (new bytes, new pinned digest), uploaded directly to the store.
            version += 1;
            let bytes = content(version);
            uploaded.push(Digest::of(&bytes));
            rt.block_on(store.put(&"m/model.bin".into(), PutPayload::from(bytes)))
                .expect("upload");
        }
        let want = *uploaded.last().expect("uploaded");
        let yaml = format!(
            "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 1\npart_size_kib: 512\nparallelism: 3\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 5}}\nmodels:\n  - name: m\n    source: s3://models/m/model.bin\n    sha256: {want}\n    store: {{aws_endpoint: \"http://127.0.0.1:{}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: test}}\n",
            root.path().display(),
            proxy.port
        );
        let fault = FAULTS[i % FAULTS.len()];
        proxy.set(fault);
        let a = agent(&yaml);
        let result = rt.block_on(a.sync_once());
        let ok = result.iter().all(|(_, r)| r.is_ok());
        if ok {
            ok_under_fault += 1;
            assert_eq!(consistent(root.path(), &uploaded), Some(want), "{fault:?}");
        } else {
            failed_syncs += 1;
        }
        // Whatever happened: never corrupt, never partial, and never ready without a complete,
        // verified version (the previous one keeps serving while a new one cannot be fetched).
        let now = consistent(root.path(), &uploaded);
        if a.ready() {
            assert!(now.is_some(), "ready with nothing published ({fault:?})");
        } else {
            not_ready_under_fault += 1;
        }
        // The fault clears: the pinned version is published.
        proxy.set(Fault::None);
        let result = rt.block_on(a.sync_once());
        assert!(
            result.iter().all(|(_, r)| r.is_ok()),
            "after {fault:?} cleared: {result:?}"
        );
        assert!(a.ready());
        assert_eq!(consistent(root.path(), &uploaded), Some(want));
        published += 1;
    }
    let injected = proxy.injected.load(Ordering::Relaxed);
    println!(
        "faults: {faults} rounds ({injected} connections faulted), {failed_syncs} syncs failed cleanly under a fault, \
         {ok_under_fault} succeeded through it (retries, slow), {not_ready_under_fault} left the agent not ready (nothing published yet), {published} recoveries published the pinned version, \
         {} versions uploaded, 0 corrupt or partial publishes",
        uploaded.len()
    );
    assert!(injected >= faults / 2, "the proxy injected too few faults");
}
