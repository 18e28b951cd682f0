//! The Docker engine module (`shoal::engine`) against the real Docker engine, with the `shoal/whoami`
//! image the repo builds itself (`deploy/images/build`, run once per test binary). Each test owns a
//! unique node id and force-removes every container labelled with it when it ends, passed or not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal::engine::{ContainerSpec, ContainerState, DockerRuntime, Owner, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};

use crate::fleet::{whoami_image, WHOAMI as IMAGE};

/// One test's node: a unique id, and on drop every container labelled with it removed.
struct TestNode {
    id: String,
}

impl TestNode {
    fn new() -> TestNode {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TestNode {
            id: format!("it-{}-{n}", std::process::id()),
        }
    }

    fn owner(&self, task: &str) -> Owner {
        Owner {
            task: task.to_string(),
            service: format!("{}-web", self.id),
            node: self.id.clone(),
        }
    }

    /// A whoami container for `task`, its port 80 published on a random loopback port.
    fn whoami(&self, task: &str) -> ContainerSpec {
        let mut spec = ContainerSpec::new(format!("{}-{task}", self.id), IMAGE, self.owner(task));
        spec.ports.push("80".parse().unwrap());
        spec.host_ip = Some([127, 0, 0, 1].into());
        spec
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        crate::fleet::remove_node_containers(&self.id);
    }
}

/// GET `path` with `Connection: close`, retried until the server behind the published port answers.
async fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut response = String::new();
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)).await {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: whoami\r\nConnection: close\r\n\r\n");
            if conn.write_all(request.as_bytes()).await.is_ok() {
                let _ = conn.read_to_string(&mut response).await;
            }
        }
        if let Some((head, body)) = response.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 200 "), "GET {path}: {head}");
            return body.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP answer on 127.0.0.1:{port}{path}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

async fn runtime() -> DockerRuntime {
    whoami_image();
    DockerRuntime::connect(None)
        .await
        .expect("connecting to the local Docker engine")
}

#[tokio::test(flavor = "multi_thread")]
async fn whoami_runs_answers_is_adopted_stops_and_is_removed() {
    let (docker, node) = (runtime().await, TestNode::new());
    let id = docker.create_and_start(&node.whoami("t1")).await.unwrap();

    let info = docker.inspect(&id).await.unwrap();
    assert_eq!(info.state, ContainerState::Running);
    assert_eq!(info.owner, Some(node.owner("t1")));
    let port = info.host_port(80).expect("port 80 published");
    let body = http_get(port, "/").await;
    assert!(body.contains("task: t1\n"), "{body}");
    assert!(body.contains(&format!("node: {}\n", node.id)), "{body}");
    assert!(
        body.contains(&format!("container: {}\n", &id[..12])),
        "{body}"
    );
    assert_eq!(http_get(port, "/health").await, "ok");

    let adopted = docker.adopt(&node.id).await.unwrap();
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(
        (
            adopted[0].id.as_str(),
            adopted[0].owner.as_ref().unwrap().task.as_str()
        ),
        (id.as_str(), "t1")
    );

    // whoami handles SIGTERM as PID 1: the stop must not wait out its timeout for SIGKILL.
    let started = Instant::now();
    docker.stop(&id, Duration::from_secs(20)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    let state = docker.inspect(&id).await.unwrap().state;
    assert_eq!(
        state,
        ContainerState::Exited {
            exit_code: 0,
            oom_killed: false
        }
    );
    docker
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stopping a stopped container");

    docker.remove(&id).await.unwrap();
    assert!(matches!(
        docker.inspect(&id).await,
        Err(RuntimeError::NotFound { .. })
    ));
    docker
        .remove(&id)
        .await
        .expect("removing twice is not an error");
    assert!(docker.adopt(&node.id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_container_shows_exited_with_its_signal() {
    let (docker, node) = (runtime().await, TestNode::new());
    let id = docker.create_and_start(&node.whoami("t1")).await.unwrap();
    docker.kill(&id).await.unwrap();
    let state = docker.inspect(&id).await.unwrap().state;
    assert_eq!(
        state,
        ContainerState::Exited {
            exit_code: 137,
            oom_killed: false
        }
    );
    docker
        .kill(&id)
        .await
        .expect("killing a dead container is not an error");
    let adopted = docker.adopt(&node.id).await.unwrap();
    assert_eq!(
        adopted.len(),
        1,
        "an exited container is still found: {adopted:?}"
    );
    assert!(!adopted[0].state.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_is_a_distinct_error_and_leaves_nothing() {
    let (docker, node) = (runtime().await, TestNode::new());
    let image = format!("shoal/never-built-{}:latest", node.id);
    let mut spec = node.whoami("t1");
    spec.image = image.clone();
    let err = docker.create_and_start(&spec).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::ImageMissing { image: i } if *i == image),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("image {image} not present on this node")
    );
    assert!(docker.adopt(&node.id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn name_and_host_port_conflicts_are_distinct_and_leave_nothing_behind() {
    let (docker, node) = (runtime().await, TestNode::new());
    let id = docker.create_and_start(&node.whoami("t1")).await.unwrap();
    let err = docker
        .create_and_start(&node.whoami("t1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NameConflict { .. }), "{err:?}");

    let taken = docker.inspect(&id).await.unwrap().host_port(80).unwrap();
    let mut spec = node.whoami("t2");
    spec.ports[0].host_port = Some(taken);
    let err = docker.create_and_start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::PortConflict { .. }), "{err:?}");
    let tasks: Vec<_> = docker
        .adopt(&node.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.owner.unwrap().task)
        .collect();
    assert_eq!(
        tasks,
        ["t1"],
        "the container that could not start was removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_info_names_the_engine_and_its_images() {
    let docker = runtime().await;
    let info = docker.engine_info().await.unwrap();
    assert!(
        !info.version.is_empty() && info.cpus > 0 && info.memory_bytes > 0,
        "{info:?}"
    );
    assert!(info.images.iter().any(|i| i == IMAGE), "{info:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_engine_is_a_connect_error_naming_it() {
    let err = DockerRuntime::connect(Some("/nonexistent/docker.sock"))
        .await
        .unwrap_err();
    assert!(err.is_engine_unreachable(), "{err:?}");
    assert!(
        err.to_string().contains("unix:///nonexistent/docker.sock"),
        "{err}"
    );
}
