//! Discovery: finding workers and brokers in the DHT.

pub mod link;
