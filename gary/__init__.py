"""gary: the MusicGen continuation server for gary4live, gary4juce and gary4beatbox."""
