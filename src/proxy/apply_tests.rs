//! The apply logic against a recording double of the proxy, and once against a real nginx when
//! one is installed.

use std::cell::RefCell;

use super::*;
use crate::model::{ProxyHost, ProxyModel, Upstream};
use crate::proxy::control::{find_program, Local, ReloadMethod};
use crate::proxy::render::RenderError;

/// Records every call; validation and reload fail while told to.
#[derive(Default)]
struct Double {
    calls: RefCell<Vec<String>>,
    refuse: RefCell<Option<String>>,
    down: RefCell<bool>,
}

impl Control for &Double {
    async fn validate(&self, candidate: &Path, live: &Path) -> Result<(), ApplyError> {
        let text = std::fs::read_to_string(candidate).unwrap();
        assert_eq!(
            candidate.parent(),
            live.parent(),
            "validated beside the live file"
        );
        self.calls
            .borrow_mut()
            .push(format!("validate {}", text.lines().count()));
        match self.refuse.borrow().clone() {
            Some(line) => Err(ApplyError::Invalid {
                program: "nginx".into(),
                line,
            }),
            None => Ok(()),
        }
    }

    async fn reload(&self) -> Result<(), ApplyError> {
        self.calls.borrow_mut().push("reload".into());
        if *self.down.borrow() {
            return Err(ApplyError::NotRunning {
                kind: "nginx".into(),
                detail: "no pid in /run/nginx.pid".into(),
            });
        }
        Ok(())
    }
}

impl Double {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }
}

fn record(generation: u64, hosts: &[&str]) -> ProxyConfig {
    let hosts = hosts
        .iter()
        .map(|name| ProxyHost {
            name: name.to_string(),
            upstreams: vec![Upstream {
                addr: "127.0.0.2:32768".into(),
                task_id: "t1".into(),
                node: "node-1".into(),
            }],
            ..Default::default()
        })
        .collect();
    ProxyConfig {
        generation,
        model: ProxyModel {
            hosts,
            errors: vec![],
        },
        nginx: String::new(),
        haproxy: String::new(),
    }
}

fn applier<'d>(dir: &Path, template: Option<PathBuf>, double: &'d Double) -> Applier<&'d Double> {
    let options = RenderOptions {
        http_port: 8080,
        ..Default::default()
    };
    Applier::new(
        ProxyKind::Nginx,
        dir.join("nginx.conf"),
        template,
        options,
        double,
    )
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_new_config_is_written_validated_and_reloaded_and_an_unchanged_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let double = Double::default();
    let mut a = applier(dir.path(), None, &double);
    assert_eq!(
        a.apply(&record(1, &["a.local"]), 10).await,
        Outcome::Reloaded
    );
    assert_eq!(double.take().len(), 2);
    assert_eq!(double.calls.borrow().len(), 0);
    let live = std::fs::read_to_string(dir.path().join("nginx.conf")).unwrap();
    assert!(
        live.contains("upstream a.local") && live.contains("listen 8080"),
        "{live}"
    );
    assert_eq!(files_in(dir.path()), ["nginx.conf"]);

    // A new leader writes the same model again (another revision): no write, no reload.
    assert_eq!(
        a.apply(&record(1, &["a.local"]), 14).await,
        Outcome::Unchanged
    );
    assert!(double.take().is_empty());
    let status = a.status("p1", 5);
    assert_eq!(
        (
            status.applied_generation,
            status.applied_revision,
            status.error
        ),
        (1, 14, None)
    );
    assert_eq!(
        (status.name.as_str(), status.kind.as_str()),
        ("p1", "nginx")
    );

    assert_eq!(
        a.apply(&record(2, &["a.local", "b.local"]), 20).await,
        Outcome::Reloaded
    );
    assert_eq!(double.take()[1], "reload");
}

#[tokio::test]
async fn a_refused_config_keeps_the_old_file_and_reports_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let double = Double::default();
    let mut a = applier(dir.path(), None, &double);
    a.apply(&record(1, &["a.local"]), 10).await;
    let before = std::fs::read_to_string(dir.path().join("nginx.conf")).unwrap();
    double.take();

    *double.refuse.borrow_mut() = Some("[emerg] host not found in upstream".into());
    let outcome = a.apply(&record(2, &["b.local"]), 20).await;
    assert!(matches!(
        outcome,
        Outcome::Failed(ApplyError::Invalid { .. })
    ));
    assert_eq!(double.take().len(), 1, "validated, never reloaded");
    let after = std::fs::read_to_string(dir.path().join("nginx.conf")).unwrap();
    assert_eq!(before, after);
    assert_eq!(
        files_in(dir.path()),
        ["nginx.conf"],
        "no candidate left behind"
    );
    let status = a.status("p1", 5);
    assert_eq!(
        (status.applied_generation, status.applied_revision),
        (1, 10)
    );
    assert_eq!(
        status.error.as_deref(),
        Some("generation 2: nginx refused the config: [emerg] host not found in upstream")
    );

    // The next generation that validates clears the error.
    *double.refuse.borrow_mut() = None;
    assert_eq!(
        a.apply(&record(3, &["c.local"]), 30).await,
        Outcome::Reloaded
    );
    assert_eq!(a.status("p1", 6).error, None);
}

#[tokio::test]
async fn a_record_with_a_hostile_upstream_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let double = Double::default();
    let mut a = applier(dir.path(), None, &double);
    a.apply(&record(1, &["a.local"]), 10).await;
    let before = std::fs::read_to_string(dir.path().join("nginx.conf")).unwrap();
    double.take();

    let mut hostile = record(2, &["a.local"]);
    hostile.model.hosts[0].upstreams[0].addr = "127.0.0.2:1; } server { listen 81".into();
    let outcome = a.apply(&hostile, 20).await;
    assert!(
        matches!(
            outcome,
            Outcome::Failed(ApplyError::Render(RenderError::Unsafe(_)))
        ),
        "{outcome:?}"
    );
    assert!(double.take().is_empty(), "nothing validated or reloaded");
    let after = std::fs::read_to_string(dir.path().join("nginx.conf")).unwrap();
    assert_eq!(before, after);
    assert_eq!(files_in(dir.path()), ["nginx.conf"]);
    let error = a.status("p1", 5).error.unwrap();
    assert!(
        error.contains("upstream") && error.contains("host:port"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_reload_puts_the_old_file_back() {
    let dir = tempfile::tempdir().unwrap();
    let double = Double::default();
    let mut a = applier(dir.path(), None, &double);
    a.apply(&record(1, &["a.local"]), 10).await;
    let before = std::fs::read_to_string(dir.path().join("nginx.conf")).unwrap();

    *double.down.borrow_mut() = true;
    let outcome = a.apply(&record(2, &["b.local"]), 20).await;
    assert!(matches!(
        outcome,
        Outcome::Failed(ApplyError::NotRunning { .. })
    ));
    let after = std::fs::read_to_string(dir.path().join("nginx.conf")).unwrap();
    assert_eq!(before, after);
    assert_eq!(
        a.status("p1", 5).error.as_deref(),
        Some("generation 2: nginx is not running (no pid in /run/nginx.pid)")
    );
    assert_eq!(files_in(dir.path()), ["nginx.conf"]);

    // Retried once nginx runs again: it is reloaded, although the record did not change.
    *double.down.borrow_mut() = false;
    double.take();
    assert_eq!(
        a.apply(&record(2, &["b.local"]), 20).await,
        Outcome::Reloaded
    );
    assert_eq!(double.take().last().map(String::as_str), Some("reload"));
}

#[tokio::test]
async fn a_broken_or_missing_template_is_reported_and_a_fixed_one_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let live_dir = dir.path().join("live");
    std::fs::create_dir(&live_dir).unwrap();
    let template = dir.path().join("nginx.tmpl");
    let double = Double::default();
    let mut a = applier(&live_dir, Some(template.clone()), &double);

    let outcome = a.apply(&record(1, &["a.local"]), 10).await;
    assert!(
        matches!(
            outcome,
            Outcome::Failed(ApplyError::TemplateUnreadable { .. })
        ),
        "{outcome:?}"
    );
    let error = a.status("p1", 1).error.unwrap();
    assert!(
        error.starts_with("generation 1: template ") && error.contains("cannot read it"),
        "{error}"
    );

    std::fs::write(&template, "events {}\nhttp {\n{% for h in hosts %}\n").unwrap();
    let outcome = a.apply(&record(1, &["a.local"]), 10).await;
    assert!(
        matches!(outcome, Outcome::Failed(ApplyError::Render(_))),
        "{outcome:?}"
    );
    let error = a.status("p1", 2).error.unwrap();
    assert!(error.contains(&template.display().to_string()), "{error}");
    assert!(double.take().is_empty(), "nothing validated or reloaded");
    assert!(files_in(&live_dir).is_empty(), "nothing written");

    std::fs::write(
        &template,
        "events {}\nhttp {\n{% for h in hosts %}  # {{ h.name }} on {{ http_port }}\n{% endfor %}}\n",
    )
    .unwrap();
    assert_eq!(
        a.apply(&record(1, &["a.local"]), 10).await,
        Outcome::Reloaded
    );
    let live = std::fs::read_to_string(live_dir.join("nginx.conf")).unwrap();
    assert!(live.contains("# a.local on 8080"), "{live}");
    assert_eq!(a.status("p1", 3).error, None);
}

/// The real `nginx -t` on the built-in template, as `shoal dev --proxy` runs it: unprivileged
/// paths under a run dir. Skipped where nginx is not installed.
#[tokio::test]
async fn real_nginx_accepts_the_rendered_config_and_refuses_a_broken_one() {
    if find_program("nginx").is_none() {
        eprintln!("nginx is not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
    std::fs::create_dir_all(&run_dir).unwrap();
    let options = RenderOptions {
        http_port: 18080,
        https_port: 18443,
        run_dir: Some(run_dir.display().to_string()),
    };
    let path = dir.path().join("nginx.conf");
    let control = Local::new(
        ProxyKind::Nginx,
        Some(run_dir.clone()),
        ReloadMethod::Command("true".into()),
    );
    let mut a = Applier::new(
        ProxyKind::Nginx,
        path.clone(),
        None,
        options.clone(),
        control,
    );
    assert_eq!(
        a.apply(&record(1, &["a.local"]), 10).await,
        Outcome::Reloaded
    );

    let template = dir.path().join("broken.tmpl");
    std::fs::write(&template, "events {}\nhttp {\n  bogus_directive on;\n}\n").unwrap();
    let control = Local::new(
        ProxyKind::Nginx,
        Some(run_dir),
        ReloadMethod::Command("true".into()),
    );
    let mut a = Applier::new(
        ProxyKind::Nginx,
        path.clone(),
        Some(template),
        options,
        control,
    );
    let outcome = a.apply(&record(2, &["a.local"]), 20).await;
    let Outcome::Failed(ApplyError::Invalid { line, .. }) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        line.contains("bogus_directive") && line.contains(&format!("{}:3", path.display())),
        "{line}"
    );
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("upstream a.local"));
}
