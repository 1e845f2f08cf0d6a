"""Reading Caffe .caffemodel files without Caffe (needs the optional `protobuf`: conta[caffe])."""
