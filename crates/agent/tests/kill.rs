//! The agent binary killed with SIGKILL at random points of a download, its verification and
//! its publish, over and over, against a real S3 server (`moto_server`) behind a throttling,
//! byte-counting proxy. After every kill the shared directory must be consistent (`current`
//! absent or at a complete, verified version); the restarted agent resumes from its parts
//! journal, so a finished part is never downloaded twice: across every kill and restart of one
//! version, the ranged GETs the agent sends stay within the object's parts plus the parts in
//! flight at each kill.
//!
//! `make test` kills it 6 times; `make reliability` sets `KILN_RELIABILITY_KILLS=100`.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::proxy::{Fault, Proxy};
use common::{consistent, content, rt, Moto};
use kiln::Digest;
use object_store::{ObjectStoreExt, PutPayload};

const PART: u64 = 512 << 10;
const PARALLELISM: u64 = 3;

#[test]
fn sigkill_at_random_points_leaves_a_consistent_directory_and_resumes() {
    let moto = Moto::start()
        .expect("moto_server is required (on the machine image, or pip install 'moto[server]')");
    let kills: usize = std::env::var("KILN_RELIABILITY_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let rt = rt();
    let proxy = rt.block_on(Proxy::start(moto.port));
    // ~4 MB/s through the proxy: a 3 MiB version takes most of a second to fetch, so kills
    // land before, during and after the download.
    proxy.set(Fault::Slow);
    moto.create_bucket("models");
    let store = moto.store("models", "test");
    let root = tempfile::tempdir().expect("root");
    let config = root.path().join("agent.yaml");
    let mut uploaded: Vec<Digest> = Vec::new();
    let (mut version, mut killed_mid_run, mut finished_before_kill) = (0u8, 0usize, 0usize);
    let (mut gets_this_version, mut kills_this_version) = (0u64, 0u64);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let run = |wait_ms: Option<u64>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
            .args(["fetch", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kiln-agent");
        match wait_ms {
            Some(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                let done = matches!(child.try_wait(), Ok(Some(_)));
                let _ = child.kill(); // SIGKILL
                let _ = child.wait();
                !done
            }
            None => child.wait().expect("wait").success(),
        }
    };
    let parts = (content(0).len() as u64).div_ceil(PART);
    for i in 0..kills {
        if i % 3 == 0 {
            if version > 0 {
                // The version before must have completed: one more run finishes it, and its
                // bytes obey the resume bound.
                assert!(run(None), "the restarted agent finishes");
                gets_this_version += proxy.ranged.swap(0, Ordering::Relaxed);
                let bound = parts + kills_this_version * PARALLELISM;
                assert!(
                    gets_this_version <= bound,
                    "version {version}: {gets_this_version} ranged GETs for {parts} parts over {kills_this_version} kills (bound {bound}): finished parts were downloaded again"
                );
                assert_eq!(consistent(root.path(), &uploaded), uploaded.last().copied());
            }
            version += 1;
            let bytes = content(version);
            uploaded.push(Digest::of(&bytes));
            rt.block_on(store.put(&"m/model.bin".into(), PutPayload::from(bytes)))
                .expect("upload");
            std::fs::write(
                &config,
                format!(
                    "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 1\npart_size_kib: {}\nparallelism: {PARALLELISM}\nretry: {{max_attempts: 3, initial_backoff_ms: 1, max_backoff_ms: 5}}\nmodels:\n  - name: m\n    source: s3://models/m/model.bin\n    sha256: {}\n    store: {{aws_endpoint: \"http://127.0.0.1:{}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: test}}\n",
                    root.path().display(),
                    PART >> 10,
                    uploaded.last().expect("uploaded"),
                    proxy.port
                ),
            )
            .expect("config");
            proxy.ranged.store(0, Ordering::Relaxed);
            (gets_this_version, kills_this_version) = (0, 0);
        }
        // A pseudo-random kill point in 0..400 ms: start-up, listing, download (a 3 MiB version
        // in 3 throttled parts takes a few hundred ms), hash, publish, or after it finished.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = seed % 400;
        if run(Some(at)) {
            killed_mid_run += 1;
            kills_this_version += 1;
        } else {
            finished_before_kill += 1;
        }
        // After every kill: nothing, or a complete verified version, in `current`.
        let _ = consistent(root.path(), &uploaded);
    }
    assert!(run(None), "the last restart finishes");
    gets_this_version += proxy.ranged.swap(0, Ordering::Relaxed);
    let bound = parts + kills_this_version * PARALLELISM;
    assert!(gets_this_version <= bound, "{gets_this_version} > {bound}");
    assert_eq!(consistent(root.path(), &uploaded), uploaded.last().copied());
    println!(
        "kills: {kills} SIGKILLs ({killed_mid_run} mid-run, {finished_before_kill} after the run had finished), {} versions, \
         directory consistent after every kill, every version published after restart, no finished part fetched twice",
        uploaded.len()
    );
}
