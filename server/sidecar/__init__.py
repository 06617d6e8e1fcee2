"""The RTP sidecar: plain RTP/Opus in and out for bridges without WebRTC."""
