{
  "targets": [
    {
      "target_name": "backend_transfer",
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "native/addon.cc",
            "native/fdpass.cc",
            "native/unix.cc",
            "native/fdinfo.cc",
            "native/tap.cc",
            "native/poller.cc",
            "native/closer.cc",
            "native/mmap.cc"
          ]
        }]
      ]
    }
  ]
}
