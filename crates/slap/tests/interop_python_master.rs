//! Our client against the real Python master (`slapos proxy start`,
//! slapos.core 1.26.1 from PyPI): every client call, each write checked
//! through the master's own answers.

use test_support::Master;

#[test]
#[ignore = "needs the venv"]
fn needs_venv_every_client_call_against_the_python_master() {
    let master = Master::python("COMP-TEST");
    test_support::exercise::every_client_call(&master.url);
}
