//! Each partition's `.slapos-resource`: its dictionary as JSON, as SlapOS
//! writes it (`json.dumps(…, sort_keys=True, indent=4)`).

use super::Step;
use crate::state::ComputerState;
use crate::system::Observed;

/// A write for every resource file that is missing or differs.
pub(super) fn steps(obs: &Observed, state: &ComputerState) -> Vec<Step> {
    let mut steps = Vec::new();
    for p in &state.partitions {
        let path = p.path.join(".slapos-resource");
        let content = crate::state::to_json(&p.to_value(&state.software_user), 4);
        if obs.resources.get(&path) != Some(&content) {
            steps.push(Step::WriteResource { path });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_file_is_written_when_missing_or_different() {
        let cfg = super::super::tests::config("partition_amount = 2\nalter_network = false");
        let state = crate::plan::plan(&cfg, None, &Observed::default(), "root", &mut crate::plan::Picker::new(1)).unwrap().state;
        let path = |i: usize| state.partitions[i].path.join(".slapos-resource");
        let mut obs = Observed::default();
        assert_eq!(steps(&obs, &state), [Step::WriteResource { path: path(0) }, Step::WriteResource { path: path(1) }]);
        obs.resources.insert(path(0), crate::state::to_json(&state.partitions[0].to_value(&state.software_user), 4));
        obs.resources.insert(path(1), crate::state::to_json(&state.partitions[1].to_value("someone else"), 4));
        assert_eq!(steps(&obs, &state), [Step::WriteResource { path: path(1) }]);
    }
}
