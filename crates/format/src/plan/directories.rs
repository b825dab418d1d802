//! Directories: the instance and software roots (0755, the software root
//! owned by the software user), `certificate_repository_path` (0700, as
//! SlapOS's format makes it) and the partitions (0750, owned by their
//! user), created or repaired.

use std::path::Path;

use super::Step;
use crate::config::FormatConfig;
use crate::state::ComputerState;
use crate::system::Observed;

/// The steps that give every directory its mode and owner.
pub(super) fn steps(cfg: &FormatConfig, obs: &Observed, state: &ComputerState) -> Vec<Step> {
    let mut steps = Vec::new();
    dir(&mut steps, obs, &cfg.instance_root, 0o755, None);
    dir(&mut steps, obs, &cfg.software_root, 0o755, cfg.alter_user.then_some(cfg.software_user.as_str()));
    if let Some(pki) = &cfg.certificate_repository_path {
        dir(&mut steps, obs, pki, 0o700, None);
    }
    for p in &state.partitions {
        dir(&mut steps, obs, &p.path, 0o750, cfg.alter_user.then_some(p.user.as_str()));
    }
    steps
}

/// `path` with `mode`, owned by `owner` (when given).
fn dir(steps: &mut Vec<Step>, obs: &Observed, path: &Path, mode: u32, owner: Option<&str>) {
    let path = path.to_path_buf();
    match obs.paths.get(&path) {
        None => {
            steps.push(Step::CreateDirectory { path: path.clone(), mode });
            if let Some(o) = owner {
                steps.push(Step::SetOwner { path, user: o.to_string() });
            }
        }
        Some(info) => {
            if info.mode != mode {
                steps.push(Step::SetMode { path: path.clone(), mode });
            }
            if let Some(o) = owner {
                let uid = obs.users.get(o).map(|u| u.uid);
                if uid != Some(info.uid) {
                    steps.push(Step::SetOwner { path, user: o.to_string() });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::{PathInfo, UserInfo};

    #[test]
    fn a_directory_with_another_mode_or_owner_is_repaired_not_recreated() {
        let cfg = super::super::tests::config("partition_amount = 1\nalter_network = false");
        let state = crate::plan::plan(&cfg, None, &Observed::default(), "root", &mut crate::plan::Picker::new(1)).unwrap().state;
        let mut obs = Observed::default();
        let user = |uid: u32| UserInfo { uid, gid: uid, home: "/".into(), shell: "/bin/sh".into(), group: String::new(), groups: vec![] };
        obs.users.insert("tuser0".into(), user(1001));
        obs.users.insert("tsoft".into(), user(1000));
        obs.paths.insert("/srv/slapgrid".into(), PathInfo { mode: 0o755, uid: 0, gid: 0 });
        obs.paths.insert("/opt/slapgrid".into(), PathInfo { mode: 0o700, uid: 1000, gid: 0 });
        obs.paths.insert("/srv/slapgrid/slappart0".into(), PathInfo { mode: 0o750, uid: 0, gid: 0 });
        let text: Vec<String> = steps(&cfg, &obs, &state).iter().map(Step::to_string).collect();
        assert_eq!(text, ["chmod 755 /opt/slapgrid", "chown tuser0:tuser0 /srv/slapgrid/slappart0"]);
        // without alter_user, owners are not format's business
        let mut cfg = cfg;
        cfg.alter_user = false;
        let text: Vec<String> = steps(&cfg, &obs, &state).iter().map(Step::to_string).collect();
        assert_eq!(text, ["chmod 755 /opt/slapgrid"]);
    }

    #[test]
    fn the_certificate_repository_is_made_0700_and_kept_so() {
        let mut cfg = super::super::tests::config("partition_amount = 1\nalter_network = false");
        cfg.certificate_repository_path = Some("/etc/opt/slapos/ssl/partition_pki".into());
        let state = crate::plan::plan(&cfg, None, &Observed::default(), "root", &mut crate::plan::Picker::new(1)).unwrap().state;
        let text: Vec<String> = steps(&cfg, &Observed::default(), &state).iter().map(Step::to_string).collect();
        assert!(text.iter().any(|s| s.contains("/etc/opt/slapos/ssl/partition_pki") && s.contains("700")), "{text:?}");
        let mut obs = Observed::default();
        obs.paths.insert("/etc/opt/slapos/ssl/partition_pki".into(), PathInfo { mode: 0o755, uid: 0, gid: 0 });
        let text: Vec<String> = steps(&cfg, &obs, &state).iter().map(Step::to_string).collect();
        assert!(text.contains(&"chmod 700 /etc/opt/slapos/ssl/partition_pki".to_string()), "{text:?}");
    }
}
