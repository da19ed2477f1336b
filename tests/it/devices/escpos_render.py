"""Offline render of an ESC/POS byte file through emupos' printer model (no server, no ports).
Tested with emupos 0.4.0 (needs Python >= 3.13). Uses emupos internals: pin the version.
usage: python escpos_render.py IN.bin OUT_PREFIX [profile [width_dots]]
Writes OUT_PREFIX-N.png and OUT_PREFIX-N.txt for each receipt (a cut or the end of the
stream ends one) and prints the simulator's events (unknown commands, drawer kicks, ...).
width_dots narrows or widens the emupos profile's print head (e.g. 512 for a 180 dpi head,
384 for 58 mm paper), so a slip renders at the width of the posd profile it was made for."""
import sys
from emupos.config import _load_profile
from emupos.printer.printer import Printer

src, prefix = sys.argv[1], sys.argv[2]
profile = _load_profile(sys.argv[3] if len(sys.argv) > 3 else "epson-tm-t20iii", "printer", None)
if len(sys.argv) > 4:
    profile = profile.model_copy(update={"width_dots": int(sys.argv[4])})
printer = Printer("file", profile, sensor_open_level="high", job_idle_timeout_ms=10**9)
conn = "file"
outs = [printer.open_connection(conn, 0.0),
        printer.receive(conn, open(src, "rb").read(), 0.0),
        printer.close_connection(conn, 0.0)]
n = 0
for out in outs:
    for ev in out.events:
        print(f"event: {ev.type.value} {ev.data}")
    for w in out.writes:
        print(f"reply to host: {w}")
    for r in out.receipts:
        n += 1
        open(f"{prefix}-{n}.png", "wb").write(r.png)
        open(f"{prefix}-{n}.txt", "w", encoding="utf-8").write(r.text)
print(f"{n} receipt(s)")
