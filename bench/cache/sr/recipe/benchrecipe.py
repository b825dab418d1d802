"""run: `command` is run with /bin/sh at install time (fails the buildout
when it fails), with $PYTHON the interpreter running buildout; `location` is
what it creates, returned to buildout."""
import os
import subprocess
import sys


class Run(object):
    def __init__(self, buildout, name, options):
        self.options = options

    def install(self):
        env = dict(os.environ, PYTHON=sys.executable)
        subprocess.check_call(['/bin/sh', '-ec', self.options['command']], env=env)
        return [self.options['location']]

    update = install
