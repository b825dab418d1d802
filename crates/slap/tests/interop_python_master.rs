//! Our client against the real Python master (`slapos proxy start`,
//! slapos.core 1.26.1 from PyPI): every client call, each write checked
//! through the master's own answers.

mod support;

use support::PythonMaster;

#[test]
fn every_client_call_against_the_python_master() {
    let master = PythonMaster::start("COMP-TEST");
    support::exercise::every_client_call(&master.url);
}
