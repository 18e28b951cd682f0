//! Images reach the hosts without a registry: `docker save` of the main engine streamed into
//! `docker load` of each host that lacks an image (or has another image under its name), through
//! the Engine API (bollard), hosts in parallel. The API rather than the CLI: nothing is written to
//! disk, no `docker` binary is needed, and errors arrive as values.

use bollard::Docker;
use futures::StreamExt;

use super::{Host, HostsError};

/// What one host received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImages {
    pub host: String,
    pub images: Vec<String>,
}

/// The image id `docker` has under `name`, if any.
async fn image_id(docker: &Docker, name: &str) -> Result<Option<String>, bollard::errors::Error> {
    match docker.inspect_image(name).await {
        Ok(image) => Ok(image.id),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) async fn fan_out(
    main: &Docker,
    hosts: &[Host],
    images: &[String],
) -> Result<Vec<LoadedImages>, HostsError> {
    let mut wanted = Vec::with_capacity(images.len());
    for name in images {
        let id = image_id(main, name)
            .await
            .map_err(|e| HostsError::MainEngine(format!("inspecting image {name}: {e}")))?
            .ok_or_else(|| HostsError::MainEngine(format!("has no image {name}")))?;
        wanted.push((name.clone(), id));
    }
    let loads = hosts.iter().map(|host| load_into(main, host, &wanted));
    futures::future::try_join_all(loads).await
}

async fn load_into(
    main: &Docker,
    host: &Host,
    wanted: &[(String, String)],
) -> Result<LoadedImages, HostsError> {
    let engine = |reason: String| HostsError::Engine {
        host: host.name.clone(),
        reason,
    };
    let docker = host.docker()?;
    let mut missing = Vec::new();
    for (name, id) in wanted {
        let have = image_id(&docker, name)
            .await
            .map_err(|e| engine(format!("inspecting image {name}: {e}")))?;
        if have.as_deref() != Some(id.as_str()) {
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(String::as_str).collect();
        let tar = main.export_images(&names);
        let options = bollard::query_parameters::ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut load = docker.import_image_stream(options, tar, None);
        while let Some(step) = load.next().await {
            let step = step.map_err(|e| engine(format!("loading {}: {e}", missing.join(", "))))?;
            if let Some(error) = step.error_detail.and_then(|d| d.message) {
                return Err(engine(format!("loading {}: {error}", missing.join(", "))));
            }
        }
    }
    Ok(LoadedImages {
        host: host.name.clone(),
        images: missing,
    })
}
