//! What a captured mDNS response says about the device that sent it: host name, services, withdrawn services.
