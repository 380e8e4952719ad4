#!/bin/sh
echo "hello from pacmesh"
