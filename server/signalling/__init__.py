"""Signalling: HTTP (the guard, bodies, errors), WebRTC /offer, WHIP, stream controls."""
