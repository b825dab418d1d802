//! Users and groups (`alter_user`): the software user, then one user per
//! partition, each with its own group, home and `/bin/sh`, partition users
//! also in the software user's group.

use super::Step;
use crate::config::FormatConfig;
use crate::state::ComputerState;
use crate::system::Observed;

/// The steps that make the users and groups of `state` exist as wanted.
pub(super) fn steps(cfg: &FormatConfig, obs: &Observed, state: &ComputerState) -> Vec<Step> {
    let mut steps = Vec::new();
    if !cfg.alter_user {
        return steps;
    }
    let mut wanted = vec![(cfg.software_user.clone(), cfg.software_root.clone(), vec![])];
    for p in &state.partitions {
        wanted.push((p.user.clone(), p.path.clone(), vec![cfg.software_user.clone()]));
    }
    for (name, home, groups) in wanted {
        if !obs.groups.contains(&name) {
            steps.push(Step::CreateGroup { name: name.clone() });
        }
        match obs.users.get(&name) {
            None => {
                steps.push(Step::CreateUser { name: name.clone(), home, group: name.clone(), groups });
                steps.push(Step::LockPassword { name });
            }
            Some(u) => {
                let missing_group = groups.iter().any(|g| !u.groups.contains(g));
                if u.home != home || u.shell != "/bin/sh" || u.group != name || missing_group {
                    steps.push(Step::ModifyUser { name: name.clone(), home, group: name, groups });
                }
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::UserInfo;

    #[test]
    fn an_existing_user_is_modified_only_where_it_differs() {
        let cfg = super::super::tests::config("partition_amount = 1\nalter_network = false");
        let state = crate::plan::plan(&cfg, None, &Observed::default(), "root", &mut crate::plan::Picker::new(1)).unwrap().state;
        let user = |home: &str, shell: &str, group: &str, groups: &[&str]| UserInfo {
            uid: 1000,
            gid: 1000,
            home: home.into(),
            shell: shell.into(),
            group: group.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let mut obs = Observed::default();
        obs.groups.extend(["tsoft".to_string(), "tuser0".to_string()]);
        obs.users.insert("tsoft".into(), user("/opt/slapgrid", "/bin/sh", "tsoft", &[]));
        obs.users.insert("tuser0".into(), user("/srv/slapgrid/slappart0", "/bin/sh", "tuser0", &["tsoft", "audio"]));
        assert_eq!(steps(&cfg, &obs, &state), vec![], "extra groups are left alone");
        for (home, shell, group, groups) in [
            ("/home/tuser0", "/bin/sh", "tuser0", vec!["tsoft"]),
            ("/srv/slapgrid/slappart0", "/bin/bash", "tuser0", vec!["tsoft"]),
            ("/srv/slapgrid/slappart0", "/bin/sh", "users", vec!["tsoft"]),
            ("/srv/slapgrid/slappart0", "/bin/sh", "tuser0", vec![]),
        ] {
            obs.users.insert("tuser0".into(), user(home, shell, group, &groups));
            assert_eq!(
                steps(&cfg, &obs, &state),
                vec![Step::ModifyUser {
                    name: "tuser0".into(),
                    home: "/srv/slapgrid/slappart0".into(),
                    group: "tuser0".into(),
                    groups: vec!["tsoft".into()]
                }],
                "{home} {shell} {group} {groups:?}"
            );
        }
        let mut cfg = cfg;
        cfg.alter_user = false;
        assert_eq!(steps(&cfg, &Observed::default(), &state), vec![]);
    }
}
