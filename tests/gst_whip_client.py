"""A WHIP client on GStreamer's webrtcbin: a WebRTC stack that is not aiortc.

Run by tests/test_gst_whip.py with Debian's own python3 (python3-gst-1.0 and
gir1.2-gst-plugins-bad-1.0 live there, not in the project's interpreter):

    /usr/bin/python3 tests/gst_whip_client.py URL/whip?mode=enhance IN.wav OUT.raw SECONDS

It publishes IN.wav (paced in real time, Opus) over WHIP (RFC 9725: POST of an SDP offer,
201 with the answer and a Location), writes what comes back on the same connection as
raw 16-bit mono 48 kHz PCM to OUT.raw, hangs up with DELETE after SECONDS, and prints one
JSON line: {"location": ..., "status": ..., "connection": ...}. Standard library and
GStreamer only.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

SEND = (
    "filesrc location={wav} ! wavparse ! audioconvert ! audioresample ! "
    "audio/x-raw,rate=48000,channels=1 ! identity sync=true ! "
    "opusenc bitrate=64000 frame-size=20 ! rtpopuspay pt=111 ! "
    "application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 ! "
    "webrtcbin name=wb bundle-policy=max-bundle"
)
OPUS_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111"
RECEIVE = (
    "rtpopusdepay ! opusdec ! audioconvert ! audioresample ! "
    "audio/x-raw,format=S16LE,rate=48000,channels=1 ! filesink location={out} sync=false"
)


def description(kind: GstWebRTC.WebRTCSDPType, text: str) -> GstWebRTC.WebRTCSessionDescription:
    """An SDP text as webrtcbin takes it (the message is handed over to the description)."""
    _, msg = GstSdp.SDPMessage.new()
    GstSdp.sdp_message_parse_buffer(text.encode(), msg)
    return GstWebRTC.WebRTCSessionDescription.new(kind, msg)


class WhipClient:
    def __init__(self, url: str, wav: str, out: str, seconds: float) -> None:
        self.url, self.out, self.seconds = url, out, seconds
        self.loop = GLib.MainLoop()
        self.pipe = Gst.parse_launch(SEND.format(wav=wav))
        self.wb = self.pipe.get_by_name("wb")
        self.location: str | None = None
        self.result: dict[str, object] = {}
        self.posted = False
        self.wb.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.wb.connect("notify::ice-gathering-state", self.on_gathering)
        self.wb.connect("pad-added", self.on_pad_added)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def run(self) -> dict[str, object]:
        transceiver = self.wb.emit("get-transceiver", 0)
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDRECV)
        transceiver.set_property("codec-preferences", Gst.Caps.from_string(OPUS_CAPS))
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int(self.seconds * 1000), self.hang_up)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return self.result

    def on_negotiation_needed(self, wb: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer, None, None)
        wb.emit("create-offer", None, promise)

    def on_offer(self, promise: Gst.Promise, *_: object) -> None:
        promise.wait()
        reply = promise.get_reply()  # kept: the offer lives as long as the reply
        offer = reply.get_value("offer")
        # DTLS roles: webrtcbin offers actpass and, as the DTLS server, presents an RSA
        # certificate; aiortc, the client then, proposes only ECDSA cipher suites ("no
        # shared cipher"). Offering "active" makes webrtcbin the client and aiortc the
        # server with its ECDSA certificate, which both stacks support (RFC 8842 lets the
        # offerer choose active).
        text = offer.sdp.as_text().replace("a=setup:actpass", "a=setup:active")
        munged = description(GstWebRTC.WebRTCSDPType.OFFER, text)
        self.wb.emit("set-local-description", munged, Gst.Promise.new())

    def on_gathering(self, wb: Gst.Element, _pspec: object) -> None:
        # No trickle: the offer goes once every host candidate is in it.
        if wb.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post_offer)

    def post_offer(self) -> bool:
        if self.posted:
            return False
        self.posted = True
        sdp = self.wb.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(
            self.url, data=sdp.encode(), headers={"Content-Type": "application/sdp"}
        )
        with urllib.request.urlopen(req, timeout=20) as r:
            self.result["status"] = r.status
            base = self.url.split("/whip")[0]
            self.location = base + r.headers["Location"]
            answer_text = r.read().decode()
        self.result["location"] = r.headers["Location"]
        answer = description(GstWebRTC.WebRTCSDPType.ANSWER, answer_text)
        self.wb.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def on_pad_added(self, wb: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        branch = Gst.parse_bin_from_description(RECEIVE.format(out=self.out), True)
        self.pipe.add(branch)
        branch.sync_state_with_parent()
        pad.link(branch.get_static_pad("sink"))
        self.result["receiving"] = True

    def hang_up(self) -> bool:
        self.result["connection"] = str(self.wb.get_property("connection-state").value_nick)
        if self.location is not None:
            req = urllib.request.Request(self.location, method="DELETE")
            with urllib.request.urlopen(req, timeout=10) as r:
                self.result["delete_status"] = r.status
        self.loop.quit()
        return False

    def on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        err, debug = message.parse_error()
        self.result["error"] = f"{err.message} ({debug})"
        self.loop.quit()


def main() -> int:
    Gst.init(None)
    url, wav, out, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    result = WhipClient(url, wav, out, seconds).run()
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
