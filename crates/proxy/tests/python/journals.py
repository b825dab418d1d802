# The consumption journals slapos.core 1.26.1 writes, by its own code:
# slapos.collect's daily report (Journal), then slapgrid's (Slapgrid.asXML) of
# a partition's report; separated by a line "---8<---" (tests/accounting.rs).
import sys, types, logging
from lxml import etree as ElementTree
from slapos.collect.reporter import Journal
from slapos.grid.slapgrid import Slapgrid

j = Journal()
t = j.newTransaction()
for name, value in [("title", "Eco Information for C "), ("start_date", "2026-11-30 00:00:00"),
                    ("stop_date", "2026-11-30 23:59:59"), ("reference", "2026-11-30-global"),
                    ("currency", ""), ("payment_mode", ""), ("category", "")]:
    j.setProperty(t, name, value)
ElementTree.SubElement(t, "arrow").set("type", "Destination")
j.newMovement(t, resource="service_module/cpu_load_percent", title="CPU Load Percent Average for slapuser1",
              quantity=str(3.25), reference="slapuser1", category="")
j.newMovement(t, resource="service_module/memory_used", title="Used Memory", quantity=str(2048.0), reference="C", category="")
sys.stdout.write(j.getXML().decode())
sys.stdout.write("\n---8<---\n")

class Usage:
    def __init__(self, pid, usage):
        self.usage, self._id = usage, pid
    def getId(self):
        return self._id

doc = ('<?xml version="1.0"?><consumption><movement><resource>CPU</resource><title>CPU</title>'
       '<reference>x</reference><quantity>42.0</quantity><price>0.0</price><VAT>None</VAT>'
       '<category></category></movement></consumption>')
me = types.SimpleNamespace(computer_id="C", logger=logging.getLogger())
sys.stdout.write(Slapgrid.asXML(me, [Usage("slappart1", doc)]))
