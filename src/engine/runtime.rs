//! `DockerRuntime`, a handle on one Docker engine: creates and starts a `ContainerSpec`, inspects,
//! signals, stops and removes containers, lists a node's containers by label after a restart, and
//! reads the engine's version, resources, images and events. It never decides what should run; the
//! agent's task loop does.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{Stream, StreamExt};

use super::error::{engine_status, RuntimeError};
use super::spec::{ContainerSpec, NETWORK_LABEL, NODE_LABEL};
use super::status::{ContainerInfo, EngineInfo};

/// bollard's default for every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A handle on one Docker engine; cheap to clone (bollard pools its connections).
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
}

impl DockerRuntime {
    /// Connects to `url` (`unix:///path`, a bare socket path, `tcp://host:port`), or to the local socket
    /// when None, and settles on the engine's API version: bollard speaks a newer one than older engines
    /// (Debian's 20.10 stops at 1.41) accept.
    pub async fn connect(url: Option<&str>) -> Result<DockerRuntime, RuntimeError> {
        let endpoint = match url {
            None => "unix:///var/run/docker.sock".to_string(),
            Some(path) if path.starts_with('/') => format!("unix://{path}"),
            Some(url) => url.to_string(),
        };
        let connect_error = |source| RuntimeError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let docker = Docker::connect_with_host(&endpoint).map_err(connect_error)?;
        let docker = docker.negotiate_version().await.map_err(connect_error)?;
        Ok(DockerRuntime { docker, endpoint })
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn engine_error(
        &self,
        op: &'static str,
    ) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
        let endpoint = self.endpoint.clone();
        move |source| RuntimeError::Engine {
            endpoint,
            op,
            source,
        }
    }

    /// What the agent registers its node with: engine version, CPUs, memory, images present.
    pub async fn engine_info(&self) -> Result<EngineInfo, RuntimeError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(self.engine_error("version"))?;
        let info = self
            .docker
            .info()
            .await
            .map_err(self.engine_error("info"))?;
        let images = self.images().await?;
        Ok(EngineInfo {
            name: info.name.unwrap_or_default(),
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            cpus: info.ncpu.unwrap_or_default().try_into().unwrap_or_default(),
            memory_bytes: info
                .mem_total
                .unwrap_or_default()
                .try_into()
                .unwrap_or_default(),
            images,
        })
    }

    /// `repo:tag` of every tagged image present, sorted: what the scheduler's image filter needs.
    pub(crate) async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        let options = ListImagesOptionsBuilder::new().build();
        let listed = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(self.engine_error("list images"))?;
        let mut images: Vec<String> = listed
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|tag| tag != "<none>:<none>")
            .collect();
        images.sort();
        images.dedup();
        Ok(images)
    }

    /// The engine's events about node `node`'s containers (`start`, `die`, `oom`, `destroy`, ...), as
    /// their action names. The stream ends, or yields an error, when the engine goes away.
    pub(crate) fn container_events(
        &self,
        node: &str,
    ) -> impl Stream<Item = Result<String, RuntimeError>> + Send + 'static {
        self.events(HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{NODE_LABEL}={node}")]),
        ]))
    }

    /// The engine's image events (`pull`, `load`, `tag`, `untag`, `delete`, ...), as their action
    /// names; ends, or yields an error, when the engine goes away.
    pub(crate) fn image_events(
        &self,
    ) -> impl Stream<Item = Result<String, RuntimeError>> + Send + 'static {
        self.events(HashMap::from([("type", vec!["image".to_string()])]))
    }

    fn events(
        &self,
        filters: HashMap<&str, Vec<String>>,
    ) -> impl Stream<Item = Result<String, RuntimeError>> + Send + 'static {
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        // bollard's request timeout bounds the wait for the response head only, not the stream.
        let endpoint = self.endpoint.clone();
        self.docker
            .events(Some(options))
            .map(move |event| match event {
                Ok(event) => Ok(event.action.unwrap_or_default()),
                Err(source) => Err(RuntimeError::Engine {
                    endpoint: endpoint.clone(),
                    op: "events",
                    source,
                }),
            })
    }

    /// Creates and starts `spec`'s container and returns its id. A container that cannot start is
    /// removed again, so a failed attempt leaves nothing for `adopt` to find.
    pub async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let body = spec.to_create_body()?;
        let networks = ContainerSpec::user_networks(&body);
        for network in &networks {
            self.ensure_network(network).await?;
        }
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| match engine_status(&source) {
                Some((404, _)) => RuntimeError::ImageMissing {
                    image: spec.image.clone(),
                },
                Some((409, _)) => RuntimeError::NameConflict {
                    name: spec.name.clone(),
                },
                _ => RuntimeError::Create {
                    name: spec.name.clone(),
                    image: spec.image.clone(),
                    source,
                },
            })?;
        let mut started = self.docker.start_container(&created.id, None).await;
        // Another agent on this engine may have created a second network of a name between our
        // check and this start (Docker then refuses the name as ambiguous): keep the oldest
        // again, as that agent will, and start once more.
        for _ in 0..3 {
            match &started {
                Err(e) if engine_status(e).is_some_and(|(_, m)| m.contains("is ambiguous")) => {
                    for network in &networks {
                        self.ensure_network(network).await?;
                    }
                    started = self.docker.start_container(&created.id, None).await;
                }
                _ => break,
            }
        }
        if let Err(source) = started {
            if let Err(e) = self.remove(&created.id).await {
                tracing::warn!(container = %spec.name, error = %e, "removing a container that failed to start");
            }
            return Err(match engine_status(&source) {
                Some((_, m))
                    if m.contains("port is already allocated")
                        || m.contains("address already in use") =>
                {
                    RuntimeError::PortConflict {
                        container: spec.name.clone(),
                        detail: m.to_string(),
                    }
                }
                _ => RuntimeError::Docker {
                    op: "start",
                    container: spec.name.clone(),
                    source,
                },
            });
        }
        Ok(created.id)
    }

    /// Creates the bridge network `name` unless the engine has it: the cluster's networks (a
    /// compose project's `<project>_default`) exist on a node once a container there needs them.
    /// Agents sharing one engine may create it at the same moment, and Docker allows two
    /// networks of one name: every agent then keeps the oldest and removes the others.
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        if self.networks_named(name).await?.is_empty() {
            let request = bollard::models::NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(
                    NETWORK_LABEL.to_string(),
                    name.to_string(),
                )])),
                ..Default::default()
            };
            self.docker
                .create_network(request)
                .await
                .map_err(RuntimeError::on("create network", name))?;
        }
        let mut same = self.networks_named(name).await?;
        same.sort();
        for (_, id) in same.iter().skip(1) {
            let _ = self.docker.remove_network(id).await;
        }
        Ok(())
    }

    /// (created, id) of every network called exactly `name`.
    async fn networks_named(&self, name: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::new()
            .filters(&HashMap::from([("name", vec![name])]))
            .build();
        let listed = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(RuntimeError::on("list networks", name))?;
        Ok(listed
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .map(|n| (n.created.unwrap_or_default(), n.id.unwrap_or_default()))
            .collect())
    }

    pub async fn inspect(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        let inspected = self.docker.inspect_container(container, None).await;
        Ok(ContainerInfo::from_inspect(
            inspected.map_err(RuntimeError::on("inspect", container))?,
        ))
    }

    /// SIGTERM (or the image's stop signal), then SIGKILL after `timeout`. Stopping a stopped container
    /// is not an error.
    pub async fn stop(&self, container: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let t = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(t).build();
        // bollard's request timeout (2 minutes) must outlast the engine's own stop timeout.
        let docker = self
            .docker
            .clone()
            .with_timeout(timeout.saturating_add(REQUEST_TIMEOUT));
        match docker.stop_container(container, Some(options)).await {
            Err(e) if engine_status(&e).is_some_and(|(code, _)| code == 304) => Ok(()),
            result => result.map_err(RuntimeError::on("stop", container)),
        }
    }

    /// SIGKILL now. Killing a container that is not running is not an error.
    pub async fn kill(&self, container: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.docker.kill_container(container, Some(options)).await {
            Err(e) if engine_status(&e).is_some_and(|(code, _)| code == 409) => Ok(()),
            result => result.map_err(RuntimeError::on("kill", container)),
        }
    }

    /// Sends `signal` (`SIGHUP`, `SIGUSR2`...) to a running container's main process: how `shoal proxy`
    /// reloads an nginx or haproxy that runs in a container, as the seed's Interlock did.
    pub(crate) async fn signal(&self, container: &str, signal: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        let sent = self.docker.kill_container(container, Some(options)).await;
        sent.map_err(RuntimeError::on("signal", container))
    }

    /// Removes the container whatever its state, with its anonymous volumes. Idempotent: a container
    /// that is already gone (or going) is not an error.
    pub async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(options)).await {
            Err(e) if engine_status(&e).is_some_and(|(code, _)| code == 404 || code == 409) => {
                Ok(())
            }
            result => result.map_err(RuntimeError::on("remove", container)),
        }
    }

    /// Every container, running or not, labelled `key=value`, inspected; sorted by name.
    pub(crate) async fn list(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{key}={value}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let listed = self.docker.list_containers(Some(options)).await;
        let mut found = Vec::new();
        for summary in listed.map_err(self.engine_error("list containers"))? {
            let Some(id) = summary.id else { continue };
            match self.inspect(&id).await {
                Ok(info) => found.push(info),
                // Removed between the list and the inspect: it no longer exists to report.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The containers of node `node`, for an agent that restarts: it reconciles these with its
    /// assignments (by `owner.task`) instead of starting its tasks again. A container labelled with the
    /// node but missing an owner label (`owner` None) belongs to no task and is the caller's to remove.
    pub async fn adopt(&self, node: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.list(NODE_LABEL, node).await
    }
}
