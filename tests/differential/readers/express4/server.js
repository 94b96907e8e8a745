'use strict'
// Differential reader: Express 4, its default query parser ("extended", qs), urlencoded({ extended: true }).
// The app itself is ../express-app.js, shared with the other Express reader.
//
//   node server.js PORT

require('../express-app.js')({
  NAME: 'express4',
  express: require('express'),
  methodOverride: require('method-override'),
  multer: require('multer'),
  queryParser: 'extended',
  extended: true,
  port: Number(process.argv[2])
})
