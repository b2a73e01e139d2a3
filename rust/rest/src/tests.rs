//! The handlers over the real local stores (in a temporary directory), as the daemon composes
//! them: the local CAS, and the local action cache behind the completeness check.

use super::*;
use clientd_digest::{DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::{
    CompletenessChecking, DiskLruOptions, LocalActionCache, LocalCas, SystemClock,
};

struct Front {
    _dir: tempfile::TempDir,
    blobs: Arc<dyn BlobStore>,
    results: Arc<dyn ActionCache>,
    stats: Arc<Stats>,
    latency: Arc<clientd_upstream::Latency>,
}

impl Front {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = DiskLruOptions {
            max_bytes: 64 << 20,
            sync_writes: false,
        };
        let clock = Arc::new(SystemClock);
        let blobs: Arc<dyn BlobStore> =
            Arc::new(LocalCas::open(&dir.path().join("cas"), options, clock.clone()).unwrap());
        let results = LocalActionCache::open(&dir.path().join("ac"), options, clock).unwrap();
        let results = Arc::new(CompletenessChecking::new(Arc::new(results), blobs.clone()));
        Front {
            _dir: dir,
            blobs,
            results,
            stats: Arc::new(Stats::default()),
            latency: Arc::default(),
        }
    }

    /// A front over the same stores that has learned nothing yet (as after a restart).
    fn cache(&self) -> RestCache {
        RestCache::new(
            self.blobs.clone(),
            self.results.clone(),
            self.stats.clone(),
            self.latency.clone(),
        )
    }
}

/// A request with `body`, declaring `length` bytes if given.
fn request(method: &str, path: &str, length: Option<usize>, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(length) = length {
        request = request.header(header::CONTENT_LENGTH, length);
    }
    request.body(Full::new(body)).unwrap()
}

/// The status and body of the answer to a request with `body` (and its Content-Length), if any.
async fn call(
    cache: &RestCache,
    method: &str,
    path: &str,
    body: Option<Bytes>,
) -> (StatusCode, Bytes) {
    let length = body.as_ref().map(Bytes::len);
    let response = cache
        .handle(request(method, path, length, body.unwrap_or_default()))
        .await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn digest_of(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

fn result_naming(file: &Digest, tree: Option<&Digest>) -> ActionResult {
    ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(file.to_proto()),
            ..Default::default()
        }],
        output_directories: tree
            .map(|tree| re::OutputDirectory {
                path: "dir".into(),
                tree_digest: Some(tree.to_proto()),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn blobs_put_verified_and_got_back_by_hash() {
    let front = Front::new();
    let cache = front.cache();
    let data = Bytes::from(vec![7u8; 100_000]); // a file of its own, streamed back
    let blob = digest_of(&data);
    let path = format!("/local/cas/{}", blob.hash_hex());
    assert_eq!(
        call(&cache, "PUT", &path, Some(data.clone())).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&cache, "GET", &path, None).await,
        (StatusCode::OK, data.clone())
    );
    assert_eq!(call(&cache, "HEAD", &path, None).await.0, StatusCode::OK);
    // Again: already present, the body is read and dropped.
    assert_eq!(
        call(&cache, "PUT", &path, Some(data)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        front
            .stats
            .blobs_stored
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Bytes that are not the hash's are refused, and nothing is stored under it.
    let other = digest_of(b"other");
    let path = format!("/local/cas/{}", other.hash_hex());
    let (status, message) = call(&cache, "PUT", &path, Some(Bytes::from_static(b"wrong"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message:?}");
    assert!(
        front
            .blobs
            .find_missing(
                &InstanceName::local(),
                &[Digest::from_raw(DigestFunction::Sha256, other.hash(), 5).unwrap()]
            )
            .await
            .unwrap()
            .len()
            == 1
    );
}

#[tokio::test]
async fn action_results_and_the_blobs_they_name_after_a_restart() {
    let front = Front::new();
    let file = Bytes::from_static(b"an output");
    let file_digest = digest_of(&file);
    let root = re::Directory {
        files: vec![re::FileNode {
            name: "f".into(),
            digest: Some(file_digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let tree = Bytes::from(
        Tree {
            root: Some(root),
            children: vec![],
        }
        .encode_to_vec(),
    );
    let tree_digest = digest_of(&tree);
    let cache = front.cache();
    for (digest, data) in [(&file_digest, &file), (&tree_digest, &tree)] {
        let path = format!("/local/main/cas/{}", digest.hash_hex());
        assert_eq!(
            call(&cache, "PUT", &path, Some(data.clone())).await.0,
            StatusCode::OK
        );
    }
    let action = digest_of(b"an action").hash_hex();
    let result = result_naming(&file_digest, Some(&tree_digest));
    let ac = format!("/local/main/ac/{action}");
    let put = call(&cache, "PUT", &ac, Some(result.encode_to_vec().into())).await;
    assert_eq!(put.0, StatusCode::OK);

    // A front that knows no sizes (after a restart): the result teaches it the file's and the
    // Tree's, and the Tree its file's.
    let cache = front.cache();
    let file_path = format!("/local/main/cas/{}", file_digest.hash_hex());
    let (status, got) = call(&cache, "GET", &ac, None).await;
    assert_eq!(
        (status, ActionResult::decode(got).unwrap()),
        (StatusCode::OK, result)
    );
    let tree_path = format!("/local/main/cas/{}", tree_digest.hash_hex());
    assert_eq!(
        call(&cache, "GET", &tree_path, None).await,
        (StatusCode::OK, tree)
    );
    assert_eq!(
        call(&cache, "GET", &file_path, None).await,
        (StatusCode::OK, file.clone())
    );
    // And one more such front: what it has not learned, the store looks up by hash.
    let cache = front.cache();
    assert_eq!(
        call(&cache, "GET", &file_path, None).await,
        (StatusCode::OK, file)
    );
    let (status, message) = call(&cache, "GET", &format!("/local/main/cas/{action}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{message:?}");

    // Another instance's action cache is another namespace.
    let elsewhere = format!("/local/other/ac/{action}");
    assert_eq!(
        call(&cache, "GET", &elsewhere, None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_result_whose_outputs_are_gone_is_a_miss() {
    let front = Front::new();
    let cache = front.cache();
    let missing = digest_of(b"never stored");
    let ac = format!("/local/ac/{}", digest_of(b"action").hash_hex());
    let result = result_naming(&missing, None);
    assert_eq!(
        call(&cache, "PUT", &ac, Some(result.encode_to_vec().into()))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&cache, "GET", &ac, None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_reason() {
    let front = Front::new();
    let cache = front.cache();
    let hash = digest_of(b"x").hash_hex();
    for (method, path, body, status, says) in [
        (
            "GET",
            format!("/main/ac/{hash}"),
            None,
            StatusCode::NOT_IMPLEMENTED,
            "local/...",
        ),
        (
            "GET",
            "/local/ac/xyz".into(),
            None,
            StatusCode::BAD_REQUEST,
            "hash",
        ),
        (
            "GET",
            format!("/local/blobs/{hash}"),
            None,
            StatusCode::BAD_REQUEST,
            "/cas/",
        ),
        (
            "DELETE",
            format!("/local/cas/{hash}"),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT",
        ),
        (
            "PUT",
            format!("/local/ac/{hash}"),
            Some(Bytes::from_static(b"\xff\xff")),
            StatusCode::BAD_REQUEST,
            "ActionResult",
        ),
        (
            "PUT",
            format!("/local/cas/{hash}"),
            None,
            StatusCode::LENGTH_REQUIRED,
            "Content-Length",
        ),
    ] {
        let (got, message) = call(&cache, method, &path, body).await;
        let message = String::from_utf8_lossy(&message);
        assert_eq!(got, status, "{method} {path}: {message}");
        assert!(message.contains(says), "{method} {path}: {message}");
    }
}

#[tokio::test]
async fn an_action_result_over_the_limit_is_too_large() {
    let front = Front::new();
    let cache = front.cache();
    let path = format!("/local/ac/{}", digest_of(b"action").hash_hex());
    // Declared too long: refused before the body is read.
    let declared = request("PUT", &path, Some(MAX_ACTION_RESULT + 1), Bytes::new());
    let response = cache.handle(declared).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // No length declared (a chunked body): cut off at the limit.
    let long = Bytes::from(vec![0u8; MAX_ACTION_RESULT + 1]);
    let response = cache.handle(request("PUT", &path, None, long)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("at most"));
}

#[tokio::test]
async fn a_body_shorter_than_its_length_stores_nothing() {
    let front = Front::new();
    let cache = front.cache();
    let data = b"twelve bytes";
    let digest = digest_of(data);
    // The client declared 12 bytes and sent 6 (a connection cut mid-upload, as the handler sees
    // it): refused, and the blob is not there.
    let path = format!("/local/cas/{}", digest.hash_hex());
    let short = Bytes::from_static(&data[..6]);
    let response = cache
        .handle(request("PUT", &path, Some(data.len()), short))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let missing = front
        .blobs
        .find_missing(&InstanceName::local(), &[digest])
        .await
        .unwrap();
    assert_eq!(missing, [digest]);
}

#[tokio::test]
async fn head_answers_without_a_body() {
    let front = Front::new();
    let cache = front.cache();
    let data = Bytes::from_static(b"an output");
    let digest = digest_of(&data);
    let blob = format!("/local/cas/{}", digest.hash_hex());
    assert_eq!(
        call(&cache, "PUT", &blob, Some(data)).await.0,
        StatusCode::OK
    );
    let ac = format!("/local/ac/{}", digest_of(b"action").hash_hex());
    assert_eq!(
        call(&cache, "HEAD", &ac, None).await.0,
        StatusCode::NOT_FOUND
    );
    let result = result_naming(&digest, None).encode_to_vec();
    assert_eq!(
        call(&cache, "PUT", &ac, Some(result.clone().into()))
            .await
            .0,
        StatusCode::OK
    );
    let request = Request::builder()
        .method("HEAD")
        .uri(&ac)
        .body(Full::new(Bytes::new()));
    let response = cache.handle(request.unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        result.len().to_string()
    );
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    assert_eq!(
        call(&cache, "HEAD", &blob, None).await,
        (StatusCode::OK, Bytes::new())
    );
}
