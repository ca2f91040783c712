"""Runtime of the face-edit streamer: frames in, edited frames out."""
