//! Images for the hosts of `shoal dev --hosts N`: every `SYNC_EVERY`, the images of the cluster's
//! services that the local engine has are loaded into the hosts' engines that lack them (the
//! scheduler places a task only on a node whose engine has its image, so tasks wait until then).

use std::collections::BTreeSet;
use std::time::Duration;

use super::hosts::Hosts;
use crate::client::{Client, ClientConfig};
use crate::model::{keys, Service};

pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Sync<'a> {
    hosts: &'a Hosts,
    config: ClientConfig,
    /// Images already reported as missing from the local engine (said once).
    reported: BTreeSet<String>,
}

impl<'a> Sync<'a> {
    pub(crate) fn new(hosts: &'a Hosts, config: ClientConfig) -> Sync<'a> {
        Sync {
            hosts,
            config,
            reported: BTreeSet::new(),
        }
    }

    /// One round: the services' images, the local engine's copies, loads where they lack.
    pub(crate) async fn run(&mut self) {
        let Ok(main) = super::hosts::main_engine() else {
            return;
        };
        let mut present = Vec::new();
        for image in self.service_images().await {
            match main.inspect_image(&image).await {
                Ok(_) => present.push(image),
                Err(_) => {
                    if self.reported.insert(image.clone()) {
                        eprintln!(
                            "shoal dev: image {image} is not in the local engine; build or pull it there and the hosts get it"
                        );
                    }
                }
            }
        }
        if present.is_empty() {
            return;
        }
        match self.hosts.load_images(&main, &present).await {
            Ok(loaded) => {
                for l in loaded.iter().filter(|l| !l.images.is_empty()) {
                    eprintln!("shoal dev: loaded {} into {}", l.images.join(", "), l.host);
                }
            }
            Err(e) => eprintln!("shoal dev: loading images into the hosts: {e}"),
        }
    }

    /// The distinct images of every service; empty while no manager answers.
    async fn service_images(&self) -> BTreeSet<String> {
        let Ok(mut client) = Client::connect(self.config.clone()).await else {
            return BTreeSet::new();
        };
        let req = shoal_proto::v1::RangeRequest {
            key: keys::SERVICES.as_bytes().to_vec(),
            prefix: true,
            ..Default::default()
        };
        let Ok(resp) = client.range(req).await else {
            return BTreeSet::new();
        };
        resp.kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Service>(&kv.value).ok())
            .map(|s| s.image)
            .filter(|i| !i.is_empty())
            .collect()
    }
}
