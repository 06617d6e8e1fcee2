"""Media: the track, the packet processor and runners, Opus and RTP, the aiortc hooks."""
