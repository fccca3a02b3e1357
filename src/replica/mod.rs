//! One replica process: the VSR shell on the network. (in progress)
