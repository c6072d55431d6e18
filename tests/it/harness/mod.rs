//! Starts the real server (real model, real RocksDB) on a loopback port for a test.
#![allow(dead_code)]

pub mod process;

use semcache::config::ServeArgs;
use semcache::proto::semantic_cache_client::SemanticCacheClient;
use semcache::proto::*;
use semcache::server::SharedModel;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The default model, fetched by `models/fetch.sh`; `SEMCACHE_TEST_MODEL_DIR` overrides.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SEMCACHE_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "the tests need the real model in {}: run `models/fetch.sh` first",
        dir.display()
    );
    dir
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub client: SemanticCacheClient<Channel>,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), semcache::server::ServeError>>>,
}

impl TestServer {
    /// Starts a server on `data_dir` and waits until health says SERVING.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(ServeArgs::with_dirs(data_dir, model_dir())).await
    }

    /// Starts a server and waits until health says SERVING. Servers whose model settings are
    /// the defaults share one model, loaded once for the whole test binary.
    pub async fn start_with(args: ServeArgs) -> Self {
        let server = match shared_model(&args).await {
            Some(model) => Self::launch(args, Some(model)).await,
            None => Self::spawn(args).await,
        };
        server.wait_serving().await;
        server
    }

    /// Starts a server with a model of its own, without waiting for it.
    pub async fn spawn(args: ServeArgs) -> Self {
        Self::launch(args, None).await
    }

    async fn launch(args: ServeArgs, model: Option<SharedModel>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let task = match model {
            Some(model) => tokio::spawn(semcache::server::run_with_model(args, listener, stopped, model)),
            None => tokio::spawn(semcache::server::run(args, listener, stopped)),
        };
        let channel = loop {
            match Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
                Ok(c) => break c,
                Err(_) if !task.is_finished() => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("server did not start: {e}; {:?}", task.await),
            }
        };
        Self { addr, client: SemanticCacheClient::new(channel.clone()), channel, stop: Some(stop), task: Some(task) }
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let mut health = HealthClient::new(self.channel.clone());
        let resp = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        ServingStatus::try_from(resp.status).unwrap()
    }

    pub async fn wait_serving(&self) {
        for _ in 0..3000 {
            if self.health("").await == ServingStatus::Serving {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server did not become SERVING within 60 s");
    }

    /// Stops the server gracefully and waits until it has released the data dir.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// The model every default-configured test server shares, when `args` asks for nothing else.
async fn shared_model(args: &ServeArgs) -> Option<SharedModel> {
    static MODEL: tokio::sync::OnceCell<SharedModel> = tokio::sync::OnceCell::const_new();
    let defaults = ServeArgs::with_dirs(&args.data_dir, model_dir());
    fn same(a: &ServeArgs) -> (&Path, semcache::embed::DeviceKind, [usize; 4]) {
        (&a.model.model_dir, a.model.device, [a.max_queue, a.max_batch, a.max_batch_tokens, a.model_threads])
    }
    if same(args) != same(&defaults) {
        return None;
    }
    let model = MODEL.get_or_init(|| async { SharedModel::load(&defaults).await.expect("the shared model loads") });
    Some(model.await.clone())
}

pub fn scope(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn store_req(ns: &str, query: &str, response: &str) -> StoreRequest {
    StoreRequest { namespace: ns.into(), query: query.into(), response: response.into(), ..Default::default() }
}

pub fn lookup_req(ns: &str, query: &str) -> LookupRequest {
    LookupRequest { namespace: ns.into(), query: query.into(), ..Default::default() }
}

pub async fn store(client: &mut SemanticCacheClient<Channel>, req: StoreRequest) -> String {
    client.store(req).await.expect("store").into_inner().id
}

pub async fn lookup(client: &mut SemanticCacheClient<Channel>, req: LookupRequest) -> LookupResponse {
    client.lookup(req).await.expect("lookup").into_inner()
}

/// A client that sends `token` as its bearer token (none: no authorization metadata).
pub fn authed(channel: &Channel, token: Option<&str>) -> semcache::client::Client {
    SemanticCacheClient::with_interceptor(channel.clone(), semcache::client::Bearer::new(token).unwrap())
}

/// A `[tokens.NAME]` grant for `token`.
pub fn token_spec(name: &str, token: &str, read: &[&str], write: &[&str]) -> semcache::grpc::auth::TokenSpec {
    semcache::grpc::auth::TokenSpec {
        name: name.into(),
        sha256: semcache::grpc::auth::hash_token(token),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        requests_per_second: None,
    }
}

/// A plain HTTP GET, enough for the metrics endpoint: the whole response, headers included.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// The value of the sample line that starts with `series ` (name and labels as exposed).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}
