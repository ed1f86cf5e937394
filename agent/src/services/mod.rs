//! Supervised services of the Service Instance (dnsmasq, bird, metadata proxy, GARP,
//! hostname). Filled in by the services work.
